//! A node's attributes, read by name and type. Every attribute a converter
//! does not read is an error ([`Attributes::finish`]): an attribute Kiln
//! ignored would be a silently different model.

use std::collections::BTreeMap;

use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::{AttributeProto, NodeProto};

use crate::constant::Constant;
use crate::error::{Error, Result};

/// The attributes of one node, consumed as they are read.
pub struct Attributes<'a> {
    node: String,
    op: String,
    left: BTreeMap<&'a str, &'a AttributeProto>,
}

impl<'a> Attributes<'a> {
    /// The attributes of `node` (`label` names it in errors).
    pub fn of(node: &'a NodeProto, label: &str) -> Result<Self> {
        let mut left = BTreeMap::new();
        for a in &node.attribute {
            if !a.ref_attr_name.is_empty() {
                return Err(Error::Unsupported {
                    node: label.to_string(),
                    op: node.op_type.clone(),
                    what: format!("attribute {}", a.name),
                    reason: "attribute references (functions) are not supported".into(),
                });
            }
            if left.insert(a.name.as_str(), a).is_some() {
                return Err(Error::Invalid {
                    node: label.to_string(),
                    op: node.op_type.clone(),
                    reason: format!("attribute {} is given twice", a.name),
                });
            }
        }
        Ok(Attributes {
            node: label.to_string(),
            op: node.op_type.clone(),
            left,
        })
    }

    fn kind_error(&self, name: &str, want: &str, got: &AttributeProto) -> Error {
        Error::Invalid {
            node: self.node.clone(),
            op: self.op.clone(),
            reason: format!(
                "attribute {name} should be {want}, found type {:?}",
                got.type_.enum_value()
            ),
        }
    }

    fn take(
        &mut self,
        name: &str,
        kind: AttributeType,
        want: &str,
    ) -> Result<Option<&'a AttributeProto>> {
        match self.left.remove(name) {
            None => Ok(None),
            Some(a) => match a.type_.enum_value() {
                Ok(k) if k == kind => Ok(Some(a)),
                _ => Err(self.kind_error(name, want, a)),
            },
        }
    }

    /// An integer attribute.
    pub fn int(&mut self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .take(name, AttributeType::INT, "an integer")?
            .map(|a| a.i))
    }

    /// An integer attribute with a default.
    pub fn int_or(&mut self, name: &str, default: i64) -> Result<i64> {
        Ok(self.int(name)?.unwrap_or(default))
    }

    /// A float attribute with a default.
    pub fn float_or(&mut self, name: &str, default: f32) -> Result<f32> {
        Ok(self
            .take(name, AttributeType::FLOAT, "a float")?
            .map_or(default, |a| a.f))
    }

    /// A float attribute.
    pub fn float(&mut self, name: &str) -> Result<Option<f32>> {
        Ok(self
            .take(name, AttributeType::FLOAT, "a float")?
            .map(|a| a.f))
    }

    /// A list-of-integers attribute.
    pub fn ints(&mut self, name: &str) -> Result<Option<Vec<i64>>> {
        Ok(self
            .take(name, AttributeType::INTS, "a list of integers")?
            .map(|a| a.ints.clone()))
    }

    /// A list-of-floats attribute.
    pub fn floats(&mut self, name: &str) -> Result<Option<Vec<f32>>> {
        Ok(self
            .take(name, AttributeType::FLOATS, "a list of floats")?
            .map(|a| a.floats.clone()))
    }

    /// A string attribute.
    pub fn string(&mut self, name: &str) -> Result<Option<String>> {
        match self.take(name, AttributeType::STRING, "a string")? {
            None => Ok(None),
            Some(a) => String::from_utf8(a.s.clone())
                .map(Some)
                .map_err(|_| Error::Invalid {
                    node: self.node.clone(),
                    op: self.op.clone(),
                    reason: format!("attribute {name} is not UTF-8"),
                }),
        }
    }

    /// A list-of-strings attribute.
    pub fn strings(&mut self, name: &str) -> Result<Option<Vec<String>>> {
        match self.take(name, AttributeType::STRINGS, "a list of strings")? {
            None => Ok(None),
            Some(a) => Ok(Some(
                a.strings
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            )),
        }
    }

    /// A tensor attribute.
    pub fn tensor(&mut self, name: &str) -> Result<Option<Constant>> {
        match self.take(name, AttributeType::TENSOR, "a tensor")? {
            None => Ok(None),
            Some(a) => match a.t.as_ref() {
                Some(t) => Constant::from_proto(t).map(Some),
                None => Err(Error::Invalid {
                    node: self.node.clone(),
                    op: self.op.clone(),
                    reason: format!("attribute {name} holds no tensor"),
                }),
            },
        }
    }

    /// Refuses an attribute whose value is not `expected` (`what` says
    /// what Kiln supports, for the error).
    pub fn expect_int(&mut self, name: &str, expected: i64, what: &str) -> Result<()> {
        match self.int(name)? {
            Some(v) if v != expected => Err(Error::Unsupported {
                node: self.node.clone(),
                op: self.op.clone(),
                what: format!("attribute {name} = {v}"),
                reason: what.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Fails when any attribute was not read.
    pub fn finish(self) -> Result<()> {
        match self.left.keys().next() {
            None => Ok(()),
            Some(name) => Err(Error::Unsupported {
                node: self.node,
                op: self.op,
                what: format!("attribute {name}"),
                reason: "Kiln does not support this attribute".into(),
            }),
        }
    }
}
