//! The messages of a TensorBoard event file that Kiln writes and reads:
//! `Event` (wall time, step, and either the file version or a `Summary`)
//! and `Summary` holding tagged scalar values. prost derives their
//! encoding; only these fields are declared, with the field numbers of
//! TensorFlow's `event.proto` and `summary.proto` (no crate ships those
//! messages for the maintained prost; the unused fields are skipped by
//! any reader, as protocol buffers allow).

/// One record of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step the values belong to.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What the event carries.
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
}

/// What an [`Event`] carries.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// The first event of a file: `brain.Event:2`.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// Tagged values.
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// Tagged values at one step.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// One tagged value of a [`Summary`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    /// The series it belongs to (`train/loss`).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// The value, for scalars.
    #[prost(oneof = "Value", tags = "2")]
    pub value: Option<Value>,
}

/// The kinds of [`SummaryValue`] Kiln writes.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    /// A scalar.
    #[prost(float, tag = "2")]
    SimpleValue(f32),
}

/// The file version TensorBoard expects in a file's first event.
pub const FILE_VERSION: &str = "brain.Event:2";
