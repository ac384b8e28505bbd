//! Named functions. Every process of a cluster runs the same binary and
//! builds the same [`Registry`] at start-up; what crosses the wire is a
//! function's name plus rmp-serde arguments, never code.

use std::any::{type_name, Any};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{BoxError, Error, Result};
use crate::transport::encode;

/// Element types a dataset can hold.
pub trait Data: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> Data for T {}

/// A type-erased partition: in memory it is a `Vec<T>`; it is encoded only
/// when it leaves the executor.
pub trait Part: Send + Sync + 'static {
    /// Number of elements.
    fn len(&self) -> usize;
    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Encode as an rmp-serde `Vec<T>`.
    fn encode(&self) -> Result<Vec<u8>>;
    /// Encode the first `n` elements.
    fn encode_take(&self, n: usize) -> Result<Vec<u8>>;
    /// Copy into a new box.
    fn clone_box(&self) -> Box<dyn Part>;
    /// Bernoulli sample without replacement, deterministic in `seed`.
    fn sample(&self, fraction: f64, seed: u64) -> Box<dyn Part>;
    /// Element type name (for error messages).
    fn elem_type(&self) -> &'static str;
    /// For downcasting.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
    /// For downcasting by reference (cached partitions are shared).
    fn as_any(&self) -> &dyn Any;
}

impl<T: Data> Part for Vec<T> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn encode(&self) -> Result<Vec<u8>> {
        encode(self)
    }
    fn encode_take(&self, n: usize) -> Result<Vec<u8>> {
        encode(&self[..n.min(self.len())])
    }
    fn clone_box(&self) -> Box<dyn Part> {
        Box::new(self.clone())
    }
    fn sample(&self, fraction: f64, seed: u64) -> Box<dyn Part> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let v: Vec<T> = self
            .iter()
            .filter(|_| rng.random::<f64>() < fraction)
            .cloned()
            .collect();
        Box::new(v)
    }
    fn elem_type(&self) -> &'static str {
        type_name::<T>()
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Downcast a partition to `Vec<T>` or report which function expected what.
pub(crate) fn downcast<T: Data>(part: Box<dyn Part>, func: &str) -> Result<Vec<T>> {
    let found = part.elem_type();
    part.into_any()
        .downcast::<Vec<T>>()
        .map(|b| *b)
        .map_err(|_| Error::TypeMismatch {
            name: func.into(),
            expected: type_name::<T>(),
            found,
        })
}

fn decode_args<P: DeserializeOwned>(name: &str, args: &[u8]) -> Result<P> {
    rmp_serde::from_slice(args).map_err(|e| Error::Payload {
        what: format!("the arguments of {name:?}"),
        source: e,
    })
}

/// Decode an encoded `Vec<T>`.
pub fn decode_vec<T: Data>(bytes: &[u8]) -> Result<Vec<T>> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Payload {
        what: format!("a partition as Vec<{}>", type_name::<T>()),
        source: e,
    })
}

type DecodeFn = dyn Fn(&[u8]) -> Result<Box<dyn Part>> + Send + Sync;
type NarrowFn = dyn Fn(&[u8], Box<dyn Part>) -> Result<Box<dyn Part>> + Send + Sync;
type SourceFn = dyn Fn(&[u8], u32, u32) -> Result<Box<dyn Part>> + Send + Sync;
type FoldFn = dyn Fn(Option<&[u8]>, Box<dyn Part>) -> Result<Option<Vec<u8>>> + Send + Sync;
type CombineFn = dyn Fn(Vec<Vec<u8>>) -> Result<Option<Vec<u8>>> + Send + Sync;
type ForeachFn = dyn Fn(&[u8], Box<dyn Part>) -> Result<()> + Send + Sync;
type ShuffleWriteFn = dyn Fn(Box<dyn Part>, u32) -> Result<Vec<Vec<u8>>> + Send + Sync;
type ShuffleReadFn = dyn Fn(&[bytes::Bytes]) -> Result<Box<dyn Part>> + Send + Sync;
/// Pairs two partitions element-wise; the `u32` is the partition index
/// (for the mismatch error).
pub(crate) type ZipFn =
    dyn Fn(Box<dyn Part>, Box<dyn Part>, u32) -> Result<Box<dyn Part>> + Send + Sync;

pub(crate) struct Narrow {
    pub(crate) input: &'static str,
    pub(crate) output: &'static str,
    pub(crate) f: Arc<NarrowFn>,
}
pub(crate) struct Source {
    pub(crate) output: &'static str,
    pub(crate) f: Arc<SourceFn>,
}
pub(crate) struct Fold {
    pub(crate) elem: &'static str,
    pub(crate) fold: Arc<FoldFn>,
    pub(crate) combine: Arc<CombineFn>,
}
pub(crate) struct Foreach {
    pub(crate) elem: &'static str,
    pub(crate) f: Arc<ForeachFn>,
}
pub(crate) struct Shuffle {
    pub(crate) input: &'static str,
    pub(crate) output: &'static str,
    pub(crate) write: Arc<ShuffleWriteFn>,
    pub(crate) read: Arc<ShuffleReadFn>,
}

/// Named functions, by kind. Build it the same way in every process (a
/// function `fn registry() -> Registry` called by both roles).
#[derive(Default)]
pub struct Registry {
    narrow: HashMap<String, Narrow>,
    sources: HashMap<String, Source>,
    folds: HashMap<String, Fold>,
    foreach: HashMap<String, Foreach>,
    shuffles: HashMap<String, Shuffle>,
    decoders: HashMap<&'static str, Arc<DecodeFn>>,
    zippers: HashMap<&'static str, Arc<ZipFn>>,
    pub(crate) trainers: HashMap<String, crate::train::TrainerEntry>,
    pub(crate) optimizers: HashMap<String, crate::train::OptimizerMaker>,
}

fn bucket_of<K: Hash>(k: &K, n: u32) -> usize {
    // SipHash with fixed keys: the same in every process of one binary.
    let mut h = DefaultHasher::new();
    k.hash(&mut h);
    (h.finish() % n.max(1) as u64) as usize
}

impl Registry {
    /// A registry with the built-in sources (`kiln.text_lines`).
    pub fn new() -> Self {
        let mut r = Registry::default();
        r.register_type::<i32>()
            .register_type::<i64>()
            .register_type::<u32>()
            .register_type::<u64>()
            .register_type::<f32>()
            .register_type::<f64>()
            .register_type::<String>()
            .register_type::<(String, u64)>()
            .register_type::<(String, i64)>()
            .register_type::<(u64, u64)>()
            .register_type::<(i64, i64)>();
        r.register_source("kiln.text_lines", |files: &Vec<String>, p, n| {
            let mut out = Vec::new();
            for f in files.iter().skip(p as usize).step_by(n.max(1) as usize) {
                let text = std::fs::read_to_string(f).map_err(|e| Error::Io {
                    path: f.clone(),
                    source: e,
                })?;
                out.extend(text.lines().map(str::to_owned));
            }
            Ok(out)
        });
        r
    }

    /// Make element type `T` decodable for [`crate::Driver::parallelize`].
    /// Every `register_*` call does this for the types it uses.
    pub fn register_type<T: Data>(&mut self) -> &mut Self {
        self.decoders.insert(
            type_name::<T>(),
            Arc::new(|bytes| Ok(Box::new(decode_vec::<T>(bytes)?) as Box<dyn Part>)),
        );
        self
    }

    pub(crate) fn decoder(&self, elem: &str) -> Result<&Arc<DecodeFn>> {
        self.decoders
            .get(elem)
            .ok_or_else(|| Error::UnknownFunction {
                kind: "element type (call Registry::register_type)",
                name: elem.into(),
            })
    }

    fn insert_narrow(&mut self, name: &str, n: Narrow) {
        self.narrow.insert(name.to_owned(), n);
    }

    /// Register `f` for [`crate::Dataset::map`].
    pub fn register_map<A: Data, B: Data>(
        &mut self,
        name: &str,
        f: impl Fn(A) -> B + Send + Sync + 'static,
    ) -> &mut Self {
        self.register_map_with(name, move |_: &(), a| f(a))
    }

    /// Register a map that also takes serialized parameters `P`.
    pub fn register_map_with<P: DeserializeOwned, A: Data, B: Data>(
        &mut self,
        name: &str,
        f: impl Fn(&P, A) -> B + Send + Sync + 'static,
    ) -> &mut Self {
        self.register_type::<A>().register_type::<B>();
        let n = name.to_owned();
        self.insert_narrow(
            name,
            Narrow {
                input: type_name::<A>(),
                output: type_name::<B>(),
                f: Arc::new(move |args, part| {
                    let p: P = decode_args(&n, args)?;
                    let v: Vec<A> = downcast(part, &n)?;
                    Ok(Box::new(
                        v.into_iter().map(|a| f(&p, a)).collect::<Vec<B>>(),
                    ))
                }),
            },
        );
        self
    }

    /// Register a predicate for [`crate::Dataset::filter`].
    pub fn register_filter<A: Data>(
        &mut self,
        name: &str,
        f: impl Fn(&A) -> bool + Send + Sync + 'static,
    ) -> &mut Self {
        self.register_filter_with(name, move |_: &(), a| f(a))
    }

    /// Register a predicate with serialized parameters.
    pub fn register_filter_with<P: DeserializeOwned, A: Data>(
        &mut self,
        name: &str,
        f: impl Fn(&P, &A) -> bool + Send + Sync + 'static,
    ) -> &mut Self {
        self.register_type::<A>();
        let n = name.to_owned();
        self.insert_narrow(
            name,
            Narrow {
                input: type_name::<A>(),
                output: type_name::<A>(),
                f: Arc::new(move |args, part| {
                    let p: P = decode_args(&n, args)?;
                    let mut v: Vec<A> = downcast(part, &n)?;
                    v.retain(|a| f(&p, a));
                    Ok(Box::new(v))
                }),
            },
        );
        self
    }

    /// Register `f` for [`crate::Dataset::flat_map`].
    pub fn register_flat_map<A: Data, B: Data, I: IntoIterator<Item = B>>(
        &mut self,
        name: &str,
        f: impl Fn(A) -> I + Send + Sync + 'static,
    ) -> &mut Self {
        self.register_type::<A>().register_type::<B>();
        let n = name.to_owned();
        self.insert_narrow(
            name,
            Narrow {
                input: type_name::<A>(),
                output: type_name::<B>(),
                f: Arc::new(move |_, part| {
                    let v: Vec<A> = downcast(part, &n)?;
                    Ok(Box::new(v.into_iter().flat_map(&f).collect::<Vec<B>>()))
                }),
            },
        );
        self
    }

    /// Register `f` for [`crate::Dataset::map_partitions`]: it gets the
    /// partition index and its elements, and may fail with any error (a
    /// `String` converts with `.into()` or `?`); the task fails with
    /// [`Error::UserFunction`], the error's source chain kept.
    pub fn register_map_partitions<A: Data, B: Data>(
        &mut self,
        name: &str,
        f: impl Fn(Vec<A>) -> std::result::Result<Vec<B>, BoxError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.register_type::<A>().register_type::<B>();
        let n = name.to_owned();
        self.insert_narrow(
            name,
            Narrow {
                input: type_name::<A>(),
                output: type_name::<B>(),
                f: Arc::new(move |_, part| {
                    let v: Vec<A> = downcast(part, &n)?;
                    let out = f(v).map_err(|e| Error::UserFunction {
                        kind: "map_partitions",
                        name: n.clone(),
                        source: e,
                    })?;
                    Ok(Box::new(out))
                }),
            },
        );
        self
    }

    /// Register a user-defined source: `f(args, partition, num_partitions)`.
    /// It may fail with any error (a `String` converts with `.into()` or
    /// `?`); the task fails with [`Error::UserFunction`].
    pub fn register_source<P: DeserializeOwned, T: Data>(
        &mut self,
        name: &str,
        f: impl Fn(&P, u32, u32) -> std::result::Result<Vec<T>, BoxError> + Send + Sync + 'static,
    ) -> &mut Self {
        self.register_type::<T>();
        let n = name.to_owned();
        self.sources.insert(
            name.to_owned(),
            Source {
                output: type_name::<T>(),
                f: Arc::new(move |args, p, np| {
                    let a: P = decode_args(&n, args)?;
                    let v = f(&a, p, np).map_err(|e| Error::UserFunction {
                        kind: "source",
                        name: n.clone(),
                        source: e,
                    })?;
                    Ok(Box::new(v))
                }),
            },
        );
        self
    }

    /// Register an associative, commutative `f` for
    /// [`crate::Dataset::reduce`] and [`crate::Dataset::fold`].
    pub fn register_reduce<T: Data>(
        &mut self,
        name: &str,
        f: impl Fn(T, T) -> T + Send + Sync + 'static,
    ) -> &mut Self {
        self.register_type::<T>();
        let f = Arc::new(f);
        let (n1, n2) = (name.to_owned(), name.to_owned());
        let f1 = f.clone();
        self.folds.insert(
            name.to_owned(),
            Fold {
                elem: type_name::<T>(),
                fold: Arc::new(move |zero, part| {
                    let v: Vec<T> = downcast(part, &n1)?;
                    let init: Option<T> = match zero {
                        Some(z) => Some(decode_args(&n1, z)?),
                        None => None,
                    };
                    let r = v.into_iter().fold(init, |acc, x| match acc {
                        Some(a) => Some(f1(a, x)),
                        None => Some(x),
                    });
                    r.map(|x| encode(&x)).transpose()
                }),
                combine: Arc::new(move |parts| {
                    let mut acc: Option<T> = None;
                    for p in parts {
                        let x: T = decode_args(&n2, &p)?;
                        acc = Some(match acc {
                            Some(a) => f(a, x),
                            None => x,
                        });
                    }
                    acc.map(|x| encode(&x)).transpose()
                }),
            },
        );
        self
    }

    /// Register a side-effecting `f` for [`crate::Dataset::foreach`].
    pub fn register_foreach<T: Data>(
        &mut self,
        name: &str,
        f: impl Fn(&T) + Send + Sync + 'static,
    ) -> &mut Self {
        self.register_type::<T>();
        let n = name.to_owned();
        self.foreach.insert(
            name.to_owned(),
            Foreach {
                elem: type_name::<T>(),
                f: Arc::new(move |_, part| {
                    let v: Vec<T> = downcast(part, &n)?;
                    v.iter().for_each(&f);
                    Ok(())
                }),
            },
        );
        self
    }

    /// Register `f` for [`crate::Dataset::reduce_by_key`] on `(K, V)`
    /// pairs: combined map-side, hash-partitioned by key, combined again.
    pub fn register_reduce_by_key<K, V>(
        &mut self,
        name: &str,
        f: impl Fn(V, V) -> V + Send + Sync + 'static,
    ) -> &mut Self
    where
        K: Data + Hash + Eq,
        V: Data,
    {
        self.register_type::<(K, V)>();
        let f = Arc::new(f);
        let f2 = f.clone();
        let (n1, n2) = (name.to_owned(), name.to_owned());
        self.shuffles.insert(
            name.to_owned(),
            Shuffle {
                input: type_name::<(K, V)>(),
                output: type_name::<(K, V)>(),
                write: Arc::new(move |part, n| {
                    let v: Vec<(K, V)> = downcast(part, &n1)?;
                    let mut buckets: Vec<HashMap<K, V>> = (0..n).map(|_| HashMap::new()).collect();
                    for (k, x) in v {
                        let b = &mut buckets[bucket_of(&k, n)];
                        match b.remove(&k) {
                            Some(old) => b.insert(k, f(old, x)),
                            None => b.insert(k, x),
                        };
                    }
                    buckets
                        .into_iter()
                        .map(|b| encode(&b.into_iter().collect::<Vec<(K, V)>>()))
                        .collect()
                }),
                read: Arc::new(move |blobs| {
                    let mut m: HashMap<K, V> = HashMap::new();
                    for blob in blobs {
                        let v: Vec<(K, V)> = decode_vec(blob)?;
                        for (k, x) in v {
                            match m.remove(&k) {
                                Some(old) => m.insert(k, f2(old, x)),
                                None => m.insert(k, x),
                            };
                        }
                    }
                    let _ = &n2;
                    Ok(Box::new(m.into_iter().collect::<Vec<(K, V)>>()))
                }),
            },
        );
        self
    }

    /// Register `(K, V)` for [`crate::Dataset::group_by_key`] under `name`.
    pub fn register_group_by_key<K, V>(&mut self, name: &str) -> &mut Self
    where
        K: Data + Hash + Eq,
        V: Data,
    {
        self.register_type::<(K, V)>()
            .register_type::<(K, Vec<V>)>();
        let n1 = name.to_owned();
        self.shuffles.insert(
            name.to_owned(),
            Shuffle {
                input: type_name::<(K, V)>(),
                output: type_name::<(K, Vec<V>)>(),
                write: Arc::new(move |part, n| {
                    let v: Vec<(K, V)> = downcast(part, &n1)?;
                    let mut buckets: Vec<Vec<(K, V)>> = (0..n).map(|_| Vec::new()).collect();
                    for (k, x) in v {
                        buckets[bucket_of(&k, n)].push((k, x));
                    }
                    buckets.iter().map(encode).collect()
                }),
                read: Arc::new(move |blobs| {
                    let mut m: HashMap<K, Vec<V>> = HashMap::new();
                    for blob in blobs {
                        for (k, x) in decode_vec::<(K, V)>(blob)? {
                            m.entry(k).or_default().push(x);
                        }
                    }
                    Ok(Box::new(m.into_iter().collect::<Vec<(K, Vec<V>)>>()))
                }),
            },
        );
        self
    }

    /// Register element type `T` for [`crate::Dataset::repartition`] under
    /// `name`: elements are spread round-robin over the new partitions.
    pub fn register_repartition<T: Data>(&mut self, name: &str) -> &mut Self {
        self.register_type::<T>();
        let n1 = name.to_owned();
        self.shuffles.insert(
            name.to_owned(),
            Shuffle {
                input: type_name::<T>(),
                output: type_name::<T>(),
                write: Arc::new(move |part, n| {
                    let v: Vec<T> = downcast(part, &n1)?;
                    let mut buckets: Vec<Vec<T>> = (0..n).map(|_| Vec::new()).collect();
                    for (i, x) in v.into_iter().enumerate() {
                        buckets[i % n.max(1) as usize].push(x);
                    }
                    buckets.iter().map(encode).collect()
                }),
                read: Arc::new(move |blobs| {
                    let mut out: Vec<T> = Vec::new();
                    for blob in blobs {
                        out.extend(decode_vec::<T>(blob)?);
                    }
                    Ok(Box::new(out))
                }),
            },
        );
        self
    }

    /// Make `(A, B)` datasets buildable with [`crate::Dataset::zip`].
    pub fn register_zip<A: Data, B: Data>(&mut self) -> &mut Self {
        self.register_type::<A>()
            .register_type::<B>()
            .register_type::<(A, B)>();
        self.zippers.insert(
            type_name::<(A, B)>(),
            Arc::new(|left, right, partition| {
                let (l, r) = (left.len(), right.len());
                if l != r {
                    return Err(Error::ZipMismatch {
                        partition,
                        left: l as u64,
                        right: r as u64,
                    });
                }
                let a: Vec<A> = downcast(left, "zip")?;
                let b: Vec<B> = downcast(right, "zip")?;
                Ok(Box::new(a.into_iter().zip(b).collect::<Vec<(A, B)>>()))
            }),
        );
        self
    }

    pub(crate) fn zipper(&self, pair: &str) -> Result<&Arc<ZipFn>> {
        self.zippers
            .get(pair)
            .ok_or_else(|| Error::UnknownFunction {
                kind: "zip (call Registry::register_zip::<A, B>)",
                name: pair.into(),
            })
    }

    pub(crate) fn narrow(&self, name: &str) -> Result<&Narrow> {
        self.narrow.get(name).ok_or_else(|| Error::UnknownFunction {
            kind: "map/filter/flat_map/map_partitions",
            name: name.into(),
        })
    }
    pub(crate) fn source(&self, name: &str) -> Result<&Source> {
        self.sources
            .get(name)
            .ok_or_else(|| Error::UnknownFunction {
                kind: "source",
                name: name.into(),
            })
    }
    pub(crate) fn fold(&self, name: &str) -> Result<&Fold> {
        self.folds.get(name).ok_or_else(|| Error::UnknownFunction {
            kind: "reduce",
            name: name.into(),
        })
    }
    pub(crate) fn foreach_fn(&self, name: &str) -> Result<&Foreach> {
        self.foreach
            .get(name)
            .ok_or_else(|| Error::UnknownFunction {
                kind: "foreach",
                name: name.into(),
            })
    }
    pub(crate) fn shuffle(&self, name: &str) -> Result<&Shuffle> {
        self.shuffles
            .get(name)
            .ok_or_else(|| Error::UnknownFunction {
                kind: "shuffle (reduce_by_key/group_by_key/repartition)",
                name: name.into(),
            })
    }
}

/// Check a registered signature against the types used.
pub(crate) fn check_type(name: &str, expected: &'static str, found: &'static str) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::TypeMismatch {
            name: name.into(),
            expected,
            found,
        })
    }
}
