//! Word n-gram language models in the ARPA format (log10 probabilities and
//! log10 backoff weights), and an interpolated Witten-Bell builder.
//!
//! Lookup follows the ARPA backoff rule:
//! `P(w | h) = P*(w | h)` if the n-gram `h w` is listed, else
//! `bow(h) * P(w | h[1..])` (`bow(h) = 1` when `h` is not listed). Words
//! missing from the unigrams are scored as `<unk>`, or `-99` (log10) if the
//! model has no `<unk>`.
//!
//! Reading an ARPA file refuses what is not a probability model: orders
//! above [`MAX_ORDER`], NaN or `+inf` anywhere, a log10 probability above
//! 0. `-inf` (log10 of 0, which some tools write) is read as `-99`, the
//! spelling of log10 0 the format's own tools use and this crate writes;
//! backoff weights may be any finite number (or `-inf`, likewise `-99`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::error::{Error, Result};

/// Sentence start token.
pub const BOS: &str = "<s>";
/// Sentence end token.
pub const EOS: &str = "</s>";
/// Unknown-word token.
pub const UNK: &str = "<unk>";
/// log10 probability of a word the model cannot score at all.
pub const OOV_LOG10: f64 = -99.0;
/// Largest n-gram order built or read (tables grow with the order; 10 is
/// far beyond what helps speech recognition).
pub const MAX_ORDER: usize = 10;

/// Checks an n-gram order is in `[1, MAX_ORDER]`.
pub fn check_order(setting: &str, order: usize) -> Result<usize> {
    kiln_nn::bounds::check(setting, order, 1..=MAX_ORDER).map_err(|e| Error::range("NgramLm", e))
}

/// A log10 value of an ARPA line: finite, or `-inf` read as -99 (log10 0);
/// probabilities must also be at most 0.
fn arpa_log10(path: &Path, line: usize, field: &str, what: &str, max: f64) -> Result<f64> {
    let v: f64 = field
        .parse()
        .map_err(|_| Error::parse(path, line, format!("not a number: {field:?}")))?;
    if v == f64::NEG_INFINITY {
        return Ok(OOV_LOG10);
    }
    if !v.is_finite() || v > max {
        let allowed = if max == 0.0 {
            "a finite number <= 0 (or -inf, read as -99)"
        } else {
            "a finite number (or -inf, read as -99)"
        };
        return Err(Error::parse(
            path,
            line,
            format!("{what} {field:?} must be {allowed}"),
        ));
    }
    Ok(v)
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    log10_prob: f64,
    log10_backoff: f64,
}

/// A backoff n-gram model.
#[derive(Debug, Clone)]
pub struct NgramLm {
    words: Vec<String>,
    ids: HashMap<String, u32>,
    /// `grams[k]` holds the (k+1)-grams.
    grams: Vec<HashMap<Vec<u32>, Entry>>,
    /// Every prefix of every vocabulary word (built on first use, for
    /// decoders scoring partial words).
    prefixes: std::sync::OnceLock<std::collections::HashSet<String>>,
}

impl PartialEq for NgramLm {
    fn eq(&self, other: &Self) -> bool {
        self.words == other.words && self.ids == other.ids && self.grams == other.grams
    }
}

impl NgramLm {
    fn empty(order: usize) -> Self {
        NgramLm {
            words: Vec::new(),
            ids: HashMap::new(),
            grams: vec![HashMap::new(); order],
            prefixes: std::sync::OnceLock::new(),
        }
    }

    /// Whether `partial` begins some vocabulary word (or is one); the empty
    /// string begins every word.
    pub fn is_word_prefix(&self, partial: &str) -> bool {
        self.prefixes
            .get_or_init(|| {
                let mut set = std::collections::HashSet::new();
                for w in self.vocabulary() {
                    for (i, _) in w.char_indices().skip(1) {
                        set.insert(w[..i].to_string());
                    }
                    set.insert(w);
                }
                set
            })
            .contains(partial)
            || partial.is_empty()
    }

    /// Whether the model lists `<unk>` (then words outside the vocabulary
    /// are scored with its probability).
    pub fn has_unk(&self) -> bool {
        self.ids
            .get(UNK)
            .is_some_and(|id| self.grams[0].contains_key(&vec![*id]))
    }

    /// The smallest unigram log10 probability of a vocabulary word (what
    /// decoders score an unknown word with when the model has no `<unk>`);
    /// [`OOV_LOG10`] for a model without words.
    pub fn min_unigram_log10(&self) -> f64 {
        self.grams[0]
            .iter()
            .filter(|(k, _)| {
                let w = self.words[k[0] as usize].as_str();
                w != BOS && w != EOS && w != UNK
            })
            .map(|(_, e)| e.log10_prob)
            .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.min(p))))
            .unwrap_or(OOV_LOG10)
    }

    fn intern(&mut self, w: &str) -> u32 {
        if let Some(&id) = self.ids.get(w) {
            return id;
        }
        let id = self.words.len() as u32;
        self.words.push(w.to_string());
        self.ids.insert(w.to_string(), id);
        id
    }

    /// The model's order (largest n).
    pub fn order(&self) -> usize {
        self.grams.len()
    }

    /// Number of listed n-grams of each order (1-grams first).
    pub fn counts(&self) -> Vec<usize> {
        self.grams.iter().map(HashMap::len).collect()
    }

    /// Whether `word` is a listed unigram.
    pub fn contains(&self, word: &str) -> bool {
        self.ids
            .get(word)
            .is_some_and(|id| self.grams[0].contains_key(&vec![*id]))
    }

    /// The listed unigrams except `<s>`, `</s>` and `<unk>`.
    pub fn vocabulary(&self) -> Vec<String> {
        let mut v: Vec<String> = self.grams[0]
            .keys()
            .map(|k| self.words[k[0] as usize].clone())
            .filter(|w| w != BOS && w != EOS && w != UNK)
            .collect();
        v.sort();
        v
    }

    fn id(&self, w: &str) -> Option<u32> {
        self.ids
            .get(w)
            .copied()
            .or_else(|| self.ids.get(UNK).copied())
    }

    fn log10_ids(&self, ctx: &[u32], w: u32) -> f64 {
        let n = self.order();
        let ctx = &ctx[ctx.len().saturating_sub(n - 1)..];
        let mut key = ctx.to_vec();
        key.push(w);
        if let Some(e) = self.grams[ctx.len()].get(&key) {
            return e.log10_prob;
        }
        if ctx.is_empty() {
            return OOV_LOG10;
        }
        let bow = self.grams[ctx.len() - 1]
            .get(ctx)
            .map_or(0.0, |e| e.log10_backoff);
        bow + self.log10_ids(&ctx[1..], w)
    }

    /// `log10 P(word | history)`; only the last `order - 1` history words
    /// matter. Start a sentence's history with `<s>`.
    pub fn log10_prob(&self, history: &[&str], word: &str) -> f64 {
        let Some(w) = self.id(word) else {
            return OOV_LOG10;
        };
        // an unknown history word breaks the context there
        let mut ctx = Vec::new();
        for h in history {
            match self.id(h) {
                Some(id) => ctx.push(id),
                None => ctx.clear(),
            }
        }
        self.log10_ids(&ctx, w)
    }

    /// `ln P(word | history)`.
    pub fn ln_prob(&self, history: &[&str], word: &str) -> f64 {
        self.log10_prob(history, word) * std::f64::consts::LN_10
    }

    /// `log10` probability of a whole sentence, `<s>` and `</s>` added.
    pub fn sentence_log10(&self, sentence: &str) -> f64 {
        let mut hist = vec![BOS];
        let mut total = 0.0;
        for w in sentence.split_whitespace().chain(std::iter::once(EOS)) {
            total += self.log10_prob(&hist, w);
            hist.push(w);
        }
        total
    }

    /// Reads an ARPA file.
    pub fn read_arpa(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse_arpa(path, &text)
    }

    /// Parses ARPA text; `path` names the source in errors.
    pub fn parse_arpa(path: &Path, text: &str) -> Result<Self> {
        let mut declared: Vec<usize> = Vec::new();
        let mut section: Option<usize> = None;
        let mut in_data = false;
        let mut lm: Option<NgramLm> = None;
        let mut ended = false;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            if line == "\\data\\" {
                in_data = true;
                continue;
            }
            if line == "\\end\\" {
                ended = true;
                break;
            }
            if let Some(rest) = line.strip_prefix('\\') {
                let n: usize = rest
                    .strip_suffix("-grams:")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        Error::parse(path, line_no, format!("unknown section {line:?}"))
                    })?;
                if n == 0 || n > declared.len() {
                    return Err(Error::parse(
                        path,
                        line_no,
                        format!("section {n}-grams not declared in \\data\\"),
                    ));
                }
                if lm.is_none() {
                    lm = Some(NgramLm::empty(declared.len()));
                }
                section = Some(n);
                in_data = false;
                continue;
            }
            if in_data {
                let count = line
                    .strip_prefix("ngram ")
                    .and_then(|s| s.split_once('='))
                    .and_then(|(n, c)| {
                        Some((
                            n.trim().parse::<usize>().ok()?,
                            c.trim().parse::<usize>().ok()?,
                        ))
                    });
                match count {
                    Some((n, _)) if n == declared.len() + 1 && n > MAX_ORDER => {
                        return Err(Error::parse(
                            path,
                            line_no,
                            format!("order {n} is above the largest supported order {MAX_ORDER}"),
                        ))
                    }
                    Some((n, c)) if n == declared.len() + 1 => declared.push(c),
                    _ => {
                        return Err(Error::parse(
                            path,
                            line_no,
                            format!(
                                "expected `ngram {}=COUNT`, got {line:?}",
                                declared.len() + 1
                            ),
                        ))
                    }
                }
                continue;
            }
            let (Some(n), Some(model)) = (section, lm.as_mut()) else {
                if line.starts_with('#') || !text.contains("\\data\\") {
                    continue;
                }
                // text before \data\ (comments, headers) is ignored
                continue;
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() != n + 1 && fields.len() != n + 2 {
                return Err(Error::parse(
                    path,
                    line_no,
                    format!(
                        "a {n}-gram line needs {} or {} fields, got {}",
                        n + 1,
                        n + 2,
                        fields.len()
                    ),
                ));
            }
            let log10_prob = arpa_log10(path, line_no, fields[0], "log10 probability", 0.0)?;
            let log10_backoff = if fields.len() == n + 2 {
                arpa_log10(path, line_no, fields[n + 1], "log10 backoff", f64::INFINITY)?
            } else {
                0.0
            };
            let key: Vec<u32> = fields[1..=n].iter().map(|w| model.intern(w)).collect();
            model.grams[n - 1].insert(
                key,
                Entry {
                    log10_prob,
                    log10_backoff,
                },
            );
        }
        let model =
            lm.ok_or_else(|| Error::parse(path, 1, "no n-gram sections (not an ARPA file?)"))?;
        if !ended {
            return Err(Error::parse(
                path,
                text.lines().count(),
                "missing \\end\\ (truncated?)",
            ));
        }
        for (k, (&want, got)) in declared.iter().zip(model.counts()).enumerate() {
            if want != got {
                return Err(Error::parse(
                    path,
                    1,
                    format!(
                        "\\data\\ declares {want} {}-grams, the file lists {got}",
                        k + 1
                    ),
                ));
            }
        }
        Ok(model)
    }

    /// The model as ARPA text (n-grams sorted, 6 decimals).
    pub fn to_arpa(&self) -> String {
        let mut s = String::from("\\data\\\n");
        for (k, g) in self.grams.iter().enumerate() {
            let _ = writeln!(s, "ngram {}={}", k + 1, g.len());
        }
        for (k, g) in self.grams.iter().enumerate() {
            let _ = write!(s, "\n\\{}-grams:\n", k + 1);
            let mut rows: Vec<(String, &Entry)> = g
                .iter()
                .map(|(key, e)| {
                    let words: Vec<&str> = key
                        .iter()
                        .map(|&id| self.words[id as usize].as_str())
                        .collect();
                    (words.join(" "), e)
                })
                .collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            for (words, e) in rows {
                if k + 1 < self.order() {
                    let _ = writeln!(s, "{:.6}\t{}\t{:.6}", e.log10_prob, words, e.log10_backoff);
                } else {
                    let _ = writeln!(s, "{:.6}\t{}", e.log10_prob, words);
                }
            }
        }
        s.push_str("\n\\end\\\n");
        s
    }

    /// Writes the model as an ARPA file.
    pub fn write_arpa(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_arpa()).map_err(|e| Error::io(path, e))
    }

    /// Builds an interpolated Witten-Bell model of `order` from sentences
    /// (whitespace-separated words).
    ///
    /// Unigrams are Witten-Bell too: over `N` tokens (`</s>` included) of
    /// `T` distinct words, a seen word has `c(w) / (N + T)` and `<unk>`,
    /// every word never seen, the rest, `T / (N + T)`: the chance that the
    /// next word is new, as often as new words kept appearing in the text
    /// (add-one smoothing gave `<unk>` one count in `N + V`, which made
    /// every unknown word hundreds of times too unlikely for a decoder).
    /// `<s>` gets log10 -99 and a backoff weight. For order
    /// k >= 2 and a context `h` seen `c(h)` times followed by `t(h)` distinct
    /// words: `P(w|h) = (c(h w) + t(h) P(w|h[1..])) / (c(h) + t(h))` for seen
    /// `h w`, and `bow(h) = t(h) / (c(h) + t(h))`, which is exactly the
    /// interpolated model written in ARPA backoff form (every context's
    /// distribution sums to 1).
    pub fn build_witten_bell<'a>(
        sentences: impl IntoIterator<Item = &'a str>,
        order: usize,
    ) -> Result<Self> {
        check_order("order", order)?;
        let mut lm = NgramLm::empty(order);
        let bos = lm.intern(BOS);
        let eos = lm.intern(EOS);
        let unk = lm.intern(UNK);
        let mut counts: Vec<HashMap<Vec<u32>, u64>> = vec![HashMap::new(); order];
        for s in sentences {
            let mut toks = vec![bos];
            for w in s.split_whitespace() {
                toks.push(lm.intern(w));
            }
            toks.push(eos);
            for i in 1..toks.len() {
                for k in 1..=order {
                    if k > i + 1 {
                        break;
                    }
                    let gram = toks[i + 1 - k..=i].to_vec();
                    *counts[k - 1].entry(gram).or_insert(0) += 1;
                }
            }
        }
        // unigrams
        let vocab: Vec<u32> = (0..lm.words.len() as u32).filter(|&id| id != bos).collect();
        let total: u64 = counts[0].values().sum();
        let types = counts[0].len() as u64;
        for &w in &vocab {
            let c = counts[0].get(&vec![w]).copied().unwrap_or(0);
            let p = if total == 0 {
                // No text: every word equally likely.
                1.0 / vocab.len() as f64
            } else if w == unk {
                types as f64 / (total + types) as f64
            } else {
                c as f64 / (total + types) as f64
            };
            lm.grams[0].insert(
                vec![w],
                Entry {
                    log10_prob: if p > 0.0 { p.log10() } else { OOV_LOG10 },
                    log10_backoff: 0.0,
                },
            );
        }
        lm.grams[0].insert(
            vec![bos],
            Entry {
                log10_prob: -99.0,
                log10_backoff: 0.0,
            },
        );
        for k in 2..=order {
            let mut ctx_stats: HashMap<Vec<u32>, (u64, u64)> = HashMap::new();
            for (gram, &c) in &counts[k - 1] {
                let e = ctx_stats.entry(gram[..k - 1].to_vec()).or_insert((0, 0));
                e.0 += c;
                e.1 += 1;
            }
            let mut new = HashMap::new();
            for (gram, &c) in &counts[k - 1] {
                let (ch, th) = ctx_stats[&gram[..k - 1]];
                let lower = 10f64.powf(lm.log10_ids(&gram[1..k - 1], gram[k - 1]));
                let p = (c as f64 + th as f64 * lower) / (ch + th) as f64;
                new.insert(
                    gram.clone(),
                    Entry {
                        log10_prob: p.log10(),
                        log10_backoff: 0.0,
                    },
                );
            }
            for (ctx, (ch, th)) in ctx_stats {
                if let Some(e) = lm.grams[k - 2].get_mut(&ctx) {
                    e.log10_backoff = (th as f64 / (ch + th) as f64).log10();
                }
            }
            lm.grams[k - 1] = new;
        }
        Ok(lm)
    }
}

/// Builds a Witten-Bell model of `order` from the transcripts of every
/// `trans.txt`-format file in `transcript_files` (upper-cased, ids dropped)
/// and writes it to `out` as ARPA. Returns the model.
pub fn build_arpa_from_transcripts(
    transcript_files: &[&Path],
    order: usize,
    out: &Path,
) -> Result<NgramLm> {
    check_order("order", order)?;
    let mut sentences = Vec::new();
    for f in transcript_files {
        for (_, text) in crate::corpus::parse_transcripts(f)? {
            sentences.push(crate::text::normalize_transcript(&text));
        }
    }
    let lm = NgramLm::build_witten_bell(sentences.iter().map(String::as_str), order)?;
    lm.write_arpa(out)?;
    Ok(lm)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CORPUS: [&str; 4] = [
        "THE CAT SAT",
        "THE DOG SAT",
        "A CAT RAN",
        "THE CAT RAN HOME",
    ];

    #[test]
    fn witten_bell_distributions_sum_to_one() {
        for order in 1..=3 {
            let lm = NgramLm::build_witten_bell(CORPUS, order).unwrap();
            let mut words = lm.vocabulary();
            words.push(EOS.into());
            words.push(UNK.into());
            for hist in [
                vec![BOS],
                vec![BOS, "THE"],
                vec!["THE", "CAT"],
                vec!["HOME"],
                vec!["DOG", "RAN"],
            ] {
                let s: f64 = words
                    .iter()
                    .map(|w| 10f64.powf(lm.log10_prob(&hist, w)))
                    .sum();
                assert!((s - 1.0).abs() < 1e-9, "order {order} {hist:?}: {s}");
            }
        }
    }

    #[test]
    fn unknown_words_get_the_witten_bell_share_of_new_types() {
        // 4 sentences: "A B A </s>", "B C </s>", "A </s>", "C C </s>":
        // N = 12 tokens of T = 4 types (A, B, C, </s>).
        let lm = NgramLm::build_witten_bell(["A B A", "B C", "A", "C C"], 1).unwrap();
        let p = |w: &str| 10f64.powf(lm.log10_prob(&[BOS], w));
        assert!((p(UNK) - 4.0 / 16.0).abs() < 1e-12);
        assert!((p("ZEBRA") - 4.0 / 16.0).abs() < 1e-12, "unknown = <unk>");
        assert!((p("A") - 3.0 / 16.0).abs() < 1e-12);
        assert!((p(EOS) - 4.0 / 16.0).abs() < 1e-12);
        let empty = NgramLm::build_witten_bell([], 2).unwrap();
        assert!(empty.log10_prob(&[BOS], "X").is_finite());
    }

    #[test]
    fn arpa_round_trip() {
        let lm = NgramLm::build_witten_bell(CORPUS, 3).unwrap();
        let text = lm.to_arpa();
        let back = NgramLm::parse_arpa(Path::new("mem.arpa"), &text).unwrap();
        assert_eq!(back.counts(), lm.counts());
        for s in ["THE CAT SAT", "A DOG RAN HOME", "ZEBRA CAT"] {
            assert!((back.sentence_log10(s) - lm.sentence_log10(s)).abs() < 1e-4);
        }
        assert!(lm.sentence_log10("THE CAT SAT") > lm.sentence_log10("SAT CAT THE"));
    }

    #[test]
    fn builds_from_trans_files() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("a.trans.txt");
        std::fs::write(&t, "1-1-0000 the cat sat\n1-1-0001 THE DOG SAT\n").unwrap();
        let out = dir.path().join("lm.arpa");
        let lm = build_arpa_from_transcripts(&[&t], 2, &out).unwrap();
        let back = NgramLm::read_arpa(&out).unwrap();
        assert_eq!(back.counts(), lm.counts());
        assert!(back.contains("CAT"));
    }

    #[test]
    fn arpa_errors_name_the_line() {
        let bad = "\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0 A\n-x B\n\\end\\\n";
        let e = NgramLm::parse_arpa(Path::new("bad.arpa"), bad).unwrap_err();
        assert!(e.to_string().starts_with("bad.arpa:6:"), "{e}");
        let truncated = "\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0 A\n";
        assert!(NgramLm::parse_arpa(Path::new("t.arpa"), truncated).is_err());
    }

    #[test]
    fn arpa_values_that_are_not_probabilities_are_refused_naming_file_and_line() {
        let arpa = |p: &str, b: &str| {
            format!("\\data\\\nngram 1=2\nngram 2=1\n\n\\1-grams:\n-1.0 A -0.5\n{p} B {b}\n\n\\2-grams:\n-0.3 A B\n\\end\\\n")
        };
        for (p, b) in [
            ("nan", "0"),
            ("NaN", "0"),
            ("inf", "0"),
            ("+inf", "0"),
            ("0.5", "0"),
            ("-1", "nan"),
            ("-1", "inf"),
            ("-1", "infinity"),
        ] {
            let e = NgramLm::parse_arpa(Path::new("m.arpa"), &arpa(p, b))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("m.arpa:7:"), "{p} {b}: {e}");
        }
        // log10 0: -99 and -inf are the same (the ARPA convention).
        let lm = NgramLm::parse_arpa(Path::new("m.arpa"), &arpa("-inf", "-inf")).unwrap();
        let minus99 = NgramLm::parse_arpa(Path::new("m.arpa"), &arpa("-99", "-99")).unwrap();
        assert_eq!(lm, minus99);
        assert_eq!(lm.log10_prob(&[], "B"), -99.0);
        // A positive backoff weight (bow > 1) is legal.
        assert!(NgramLm::parse_arpa(Path::new("m.arpa"), &arpa("-1", "0.3")).is_ok());
    }

    #[test]
    fn orders_outside_1_to_10_are_refused() {
        for order in [0, MAX_ORDER + 1, usize::MAX] {
            let e = NgramLm::build_witten_bell(CORPUS, order)
                .unwrap_err()
                .to_string();
            assert!(e.contains("[1, 10]"), "{e}");
        }
        assert!(NgramLm::build_witten_bell(CORPUS, MAX_ORDER).is_ok());
        let mut arpa = String::from("\\data\\\n");
        for n in 1..=11 {
            arpa.push_str(&format!("ngram {n}=0\n"));
        }
        let e = NgramLm::parse_arpa(Path::new("big.arpa"), &arpa)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("big.arpa:12:"), "{e}");
    }
}
