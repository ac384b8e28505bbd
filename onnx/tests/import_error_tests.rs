//! Bad input to the importer: every refusal names the node, operator and
//! attribute (or the file and byte offset), and no input panics.

use std::path::{Path, PathBuf};

use kiln_onnx::{import_model, Error};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::dimension::Value as DimValue;
use onnx_protobuf::type_proto::{Tensor as TensorType, Value as TypeValue};
use onnx_protobuf::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

fn value_info(name: &str, shape: &[i64]) -> ValueInfoProto {
    let mut t = TensorType::new();
    t.elem_type = 1;
    let mut s = TensorShapeProto::new();
    for &d in shape {
        let mut dim = onnx_protobuf::tensor_shape_proto::Dimension::new();
        dim.value = Some(DimValue::DimValue(d));
        s.dim.push(dim);
    }
    t.shape = Some(s).into();
    let mut ty = TypeProto::new();
    ty.value = Some(TypeValue::TensorType(t));
    let mut v = ValueInfoProto::new();
    v.name = name.into();
    v.type_ = Some(ty).into();
    v
}

fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<AttributeProto>) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = format!("/{op}_node");
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = vec![output.into()];
    n.attribute = attrs;
    n
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

fn int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

fn string(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = v.as_bytes().to_vec();
    a
}

fn weight(name: &str, dims: &[i64]) -> TensorProto {
    let n: i64 = dims.iter().product();
    let mut t = TensorProto::new();
    t.name = name.into();
    t.dims = dims.to_vec();
    t.data_type = 1;
    t.float_data = (0..n).map(|i| i as f32 * 0.01).collect();
    t
}

/// A one-input model of `nodes` reading `x` ([2, 3, 8, 8]) and writing `y`.
fn model(nodes: Vec<NodeProto>, initializers: Vec<TensorProto>, opset: i64) -> ModelProto {
    let mut g = GraphProto::new();
    g.node = nodes;
    g.initializer = initializers;
    g.input = vec![value_info("x", &[2, 3, 8, 8])];
    g.output = vec![value_info("y", &[])];
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut o = OperatorSetIdProto::new();
    o.version = opset;
    m.opset_import = vec![o];
    m.graph = Some(g).into();
    m
}

fn error_of(m: &ModelProto) -> String {
    match import_model(m, Path::new("m.onnx")) {
        Ok(_) => panic!("the model was imported"),
        Err(e) => e.to_string(),
    }
}

fn conv(attrs: Vec<AttributeProto>) -> ModelProto {
    model(
        vec![node("Conv", &["x", "conv.weight"], "y", attrs)],
        vec![weight("conv.weight", &[4, 3, 3, 3])],
        17,
    )
}

#[test]
fn a_plain_convolution_imports() {
    let m = import_model(
        &conv(vec![ints("pads", &[1, 1, 1, 1])]),
        Path::new("m.onnx"),
    )
    .unwrap();
    assert_eq!(m.graph.nodes.len(), 1);
    assert_eq!(m.tensors[0].0, "conv.weight");
}

#[test]
fn an_unsupported_operator_names_the_node_and_the_operator() {
    let e = error_of(&model(
        vec![node("Einsum", &["x"], "y", vec![])],
        vec![],
        17,
    ));
    assert!(
        e.contains("\"/Einsum_node\"") && e.contains("operator Einsum"),
        "{e}"
    );
    assert!(e.contains("supported: Add,"), "{e}");
}

#[test]
fn unsupported_attribute_values_name_the_attribute() {
    for (attrs, want) in [
        (
            vec![string("auto_pad", "SAME_UPPER")],
            "auto_pad = SAME_UPPER",
        ),
        (vec![ints("pads", &[1, 0, 0, 1])], "pads = [1, 0, 0, 1]"),
        (vec![int("frobnicate", 1)], "attribute frobnicate"),
        (vec![int("group", 2)], "takes 6"),
    ] {
        let e = error_of(&conv(attrs));
        assert!(e.contains("(Conv)") && e.contains(want), "{want}: {e}");
    }
}

#[test]
fn an_attribute_of_the_wrong_type_is_refused() {
    let e = error_of(&conv(vec![int("pads", 1)]));
    assert!(
        e.contains("attribute pads should be a list of integers"),
        "{e}"
    );
}

#[test]
fn opsets_outside_13_to_21_and_foreign_domains_are_refused() {
    for opset in [11, 22] {
        let e = error_of(&model(
            vec![node("Conv", &["x", "conv.weight"], "y", vec![])],
            vec![weight("conv.weight", &[4, 3, 3, 3])],
            opset,
        ));
        assert!(
            e.contains(&format!("operator set {opset} is not supported")),
            "{e}"
        );
    }
    let mut m = conv(vec![]);
    m.opset_import[0].domain = "com.microsoft".into();
    assert!(error_of(&m).contains("com.microsoft"));
}

#[test]
fn a_computed_weight_or_a_missing_input_is_an_error() {
    let e = error_of(&model(
        vec![node("Conv", &["x", "x"], "y", vec![])],
        vec![],
        17,
    ));
    assert!(e.contains("known at import time"), "{e}");
    let e = error_of(&model(
        vec![node("Relu", &["nowhere"], "y", vec![])],
        vec![],
        17,
    ));
    assert!(
        e.contains("\"nowhere\" is computed by no earlier node"),
        "{e}"
    );
    let e = error_of(&model(vec![node("Relu", &["x"], "z", vec![])], vec![], 17));
    assert!(
        e.contains("graph.output \"y\"") && e.contains("no node computes it"),
        "{e}"
    );
}

#[test]
fn a_gru_with_onnx_default_reset_placement_is_refused() {
    let mut g = GraphProto::new();
    g.node = vec![node(
        "GRU",
        &["x", "w", "r"],
        "y",
        vec![int("hidden_size", 2)],
    )];
    g.initializer = vec![weight("w", &[1, 6, 3]), weight("r", &[1, 6, 2])];
    g.input = vec![value_info("x", &[5, 1, 3])];
    g.output = vec![value_info("y", &[])];
    let mut m = model(vec![], vec![], 17);
    m.graph = Some(g).into();
    let e = error_of(&m);
    assert!(e.contains("linear_before_reset = 0"), "{e}");
}

#[test]
fn external_data_is_refused_with_the_tensor_name() {
    let mut w = weight("conv.weight", &[4, 3, 3, 3]);
    w.float_data.clear();
    w.data_location = onnx_protobuf::tensor_proto::DataLocation::EXTERNAL.into();
    let m = model(
        vec![node("Conv", &["x", "conv.weight"], "y", vec![])],
        vec![w],
        17,
    );
    let e = error_of(&m);
    assert!(
        e.contains("\"conv.weight\"") && e.contains("external data"),
        "{e}"
    );
}

fn lenet_bytes() -> (PathBuf, Vec<u8>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lenet5.onnx");
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn a_truncated_file_is_an_error_naming_the_file_and_offset() {
    let (_, bytes) = lenet_bytes();
    let dir = tempfile::tempdir().unwrap();
    for cut in [1, 7, 100, bytes.len() / 2, bytes.len() - 1] {
        let path = dir.path().join("cut.onnx");
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = kiln_onnx::import_file(&path).unwrap_err();
        assert!(
            matches!(e, Error::Decode { .. } | Error::Model { .. }),
            "{cut}: {e}"
        );
        let text = e.to_string();
        assert!(text.contains("cut.onnx"), "{text}");
        if let Error::Decode { offset, len, .. } = e {
            assert_eq!(len, cut);
            assert!(offset as usize <= cut, "{text}");
        }
    }
    let e = kiln_onnx::import_file(&dir.path().join("absent.onnx")).unwrap_err();
    assert!(e.to_string().contains("absent.onnx: cannot read"), "{e}");
}

#[test]
fn corrupted_files_never_panic() {
    let (path, bytes) = lenet_bytes();
    // Flip one byte at a time across the file's structure (every 97th byte,
    // skipping most of the weights' raw data) and decode each variant.
    let mut refused = 0;
    for pos in (0..bytes.len()).step_by(97).chain(0..64) {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.clone();
            b[pos] ^= flip;
            match kiln_onnx::decode::decode_model(&b, &path) {
                Ok(m) => {
                    if import_model(&m, &path).is_err() {
                        refused += 1;
                    }
                }
                Err(_) => refused += 1,
            }
        }
    }
    assert!(refused > 0);
}
