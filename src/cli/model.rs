//! `kiln model …`: bring a model in from ONNX (`import`), run any model on
//! NumPy arrays (`run`) and describe one (`show`), so a user can compare
//! Kiln with another framework without writing Rust.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use kiln_nn::layers::{Graph, LayerConfig};
use kiln_nn::{Module, ModuleExt, Tensor};
use kiln_onnx::ModelInput;

/// `kiln model` subcommands.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Convert an ONNX model (opsets 13-21) into a Kiln model file that
    /// Kiln runs, fine-tunes and saves.
    Import(ImportArgs),
    /// Run a model (a Kiln model file or an .onnx file) in evaluation mode
    /// on NumPy .npy inputs and write its outputs as .npy files.
    Run(RunArgs),
    /// Print a model's layers, parameter count and input/output shapes.
    Show(ShowArgs),
    /// Write a model (Kiln model file or .onnx) as ONNX (opset 17) that
    /// onnxruntime runs.
    Export(ExportArgs),
}

/// Arguments of `kiln model export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The model file (DS2, SSD, digits, imported, ...).
    pub model: PathBuf,
    /// The .onnx file to write.
    #[arg(long)]
    pub onnx: PathBuf,
    /// The input shape (comma-separated, e.g. 1,1,28,28) for models whose
    /// file does not record it (digits); the first dimension is written as
    /// a symbolic batch size.
    #[arg(long, value_delimiter = ',')]
    pub input_shape: Option<Vec<usize>>,
}

/// Arguments of `kiln model import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The .onnx file.
    pub onnx: PathBuf,
    /// The Kiln model file to write (safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `kiln model run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A Kiln model file (.safetensors) or an ONNX model (.onnx).
    #[arg(long)]
    pub model: PathBuf,
    /// Input array(s), float32 or float64 .npy of any rank, one per model
    /// input in order.
    #[arg(long, required = true)]
    pub input: Vec<PathBuf>,
    /// Where to write the output(s) as float32 .npy, one per model output.
    #[arg(long, required = true)]
    pub output: Vec<PathBuf>,
}

/// Arguments of `kiln model show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// A Kiln model file (.safetensors) or an ONNX model (.onnx).
    pub model: PathBuf,
    /// Input shape (comma-separated, e.g. 1,1,28,28) to report the output
    /// shapes for, when the file does not record one.
    #[arg(long, value_delimiter = ',')]
    pub input_shape: Option<Vec<usize>>,
}

/// Runs a `kiln model` subcommand.
pub fn run(cmd: &ModelCommand) -> anyhow::Result<()> {
    match cmd {
        ModelCommand::Import(a) => import(a),
        ModelCommand::Run(a) => run_model(a),
        ModelCommand::Show(a) => show(a),
        ModelCommand::Export(a) => export(a),
    }
}

/// `kiln model import`.
pub fn import(args: &ImportArgs) -> anyhow::Result<()> {
    crate::output_paths::check_output_file("--out", &args.out)?;
    let model = kiln_onnx::import_file(&args.onnx)?;
    let source = args.onnx.file_name().map_or_else(
        || args.onnx.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    model.save(&args.out, &source)?;
    let graph = model.build()?;
    println!(
        "imported {} ({}, opset {}): {} nodes, {} parameters, {} buffer values -> {}",
        args.onnx.display(),
        model.producer,
        model.opset,
        model.graph.nodes.len(),
        graph.num_params(),
        graph.num_buffers(),
        args.out.display()
    );
    Ok(())
}

/// A model loaded for inference: a graph (any number of inputs and
/// outputs) or a single-input, single-output module.
pub enum LoadedModel {
    /// A graph model (imported models, SSD).
    Graph(Graph<f32>),
    /// Any other Kiln model.
    Module(Box<dyn Module<f32>>),
}

/// A loaded model and what its file says about it.
pub struct ModelFile {
    /// The model, in evaluation mode.
    pub model: LoadedModel,
    /// Its structure.
    pub config: LayerConfig,
    /// Its inputs' names and shapes, when the file records them.
    pub inputs: Option<Vec<ModelInput>>,
    /// Where it came from (`imported from lenet5.onnx (pytorch 2.15.0, opset 17)`).
    pub origin: String,
}

impl LoadedModel {
    /// Runs the model on `inputs` (evaluation mode).
    pub fn run(&mut self, inputs: Vec<Tensor<f32>>) -> anyhow::Result<Vec<Tensor<f32>>> {
        match self {
            LoadedModel::Graph(g) => Ok(g.forward_many(&inputs)?),
            LoadedModel::Module(m) => {
                let [x]: [Tensor<f32>; 1] = inputs.try_into().map_err(|v: Vec<_>| {
                    anyhow::anyhow!("the model takes one input, {} given", v.len())
                })?;
                Ok(vec![m.forward(&x)?])
            }
        }
    }

    /// The model as a module (its parameters and buffers).
    pub fn module(&self) -> &dyn Module<f32> {
        match self {
            LoadedModel::Graph(g) => g,
            LoadedModel::Module(m) => m.as_ref(),
        }
    }
}

/// Loads a Kiln model file or imports an .onnx file, in evaluation mode.
pub fn load_model(path: &Path) -> anyhow::Result<ModelFile> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
    {
        let imported = kiln_onnx::import_file(path)?;
        let graph = imported.build()?;
        return Ok(ModelFile {
            config: imported.config(),
            model: LoadedModel::Graph(graph),
            inputs: Some(imported.inputs.clone()),
            origin: format!("ONNX ({}, opset {})", imported.producer, imported.opset),
        });
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let meta = kiln_nn::serialize::metadata_of(&bytes, path)?;
    let mut config = kiln_nn::serialize::config_of(&bytes, path)?;
    let mut inputs = match meta.get(kiln_onnx::import::INPUTS_KEY) {
        Some(json) => Some(kiln_onnx::import::inputs_from_json(json).with_context(|| {
            format!(
                "{}: metadata {}",
                path.display(),
                kiln_onnx::import::INPUTS_KEY
            )
        })?),
        None => None,
    };
    let kind = crate::model_files::ModelKind::of_metadata(&meta);
    let origin = match (meta.get(kiln_onnx::IMPORTED_FROM_KEY), kind) {
        (Some(from), _) => format!("imported from {from}"),
        (None, Some(kind)) => kind.to_string(),
        (None, None) => "a Kiln model".to_string(),
    };
    let model = match &config {
        // DS2's layer list is for inspection: its reshape between the
        // convolutions and the recurrent layers is its own.
        _ if kind == Some(crate::model_files::ModelKind::Ds2) => {
            let c = kiln_speech::ds2::Ds2Config::of_model_bytes(&bytes, path)?;
            inputs = Some(vec![ModelInput {
                name: "input".into(),
                shape: vec![None, Some(1), Some(c.freq_bins), None],
            }]);
            let graph = c.inference_graph();
            config = LayerConfig::Graph(graph.clone());
            let mut g = graph
                .init::<f32>(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0))?;
            kiln_nn::serialize::load_weights_from_bytes(&mut g, &bytes, path)?;
            g.set_training(false);
            LoadedModel::Graph(g)
        }
        LayerConfig::Graph(g) => {
            if kind == Some(crate::model_files::ModelKind::Ssd) {
                let size =
                    kiln_detection::model::SsdConfig::of_model_bytes(&bytes, path)?.image_size();
                inputs = Some(vec![ModelInput {
                    name: g.inputs.first().cloned().unwrap_or_default(),
                    shape: vec![None, Some(3), Some(size), Some(size)],
                }]);
            }
            let mut graph =
                g.init::<f32>(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0))?;
            kiln_nn::serialize::load_weights_from_bytes(&mut graph, &bytes, path)?;
            graph.set_training(false);
            LoadedModel::Graph(graph)
        }
        _ => {
            let mut m = kiln_nn::serialize::load::<f32>(path)?;
            m.set_training(false);
            LoadedModel::Module(m)
        }
    };
    Ok(ModelFile {
        model,
        config,
        inputs,
        origin,
    })
}

/// `kiln model export`.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    crate::output_paths::check_output_file("--onnx", &args.onnx)?;
    let file = load_model(&args.model)?;
    let shapes: Vec<Vec<Option<usize>>> = match (&args.input_shape, &file.inputs) {
        (Some(s), _) => vec![s
            .iter()
            .enumerate()
            .map(|(k, &d)| (k > 0).then_some(d))
            .collect()],
        (None, Some(inputs)) => inputs.iter().map(|i| i.shape.clone()).collect(),
        (None, None) => bail!(
            "{}: the file does not record its input shape; give --input-shape (e.g. 1,1,28,28)",
            args.model.display()
        ),
    };
    let onnx = kiln_onnx::export::export_model(file.model.module(), &file.config, &shapes)?;
    let bytes = kiln_onnx::export::to_bytes(&onnx)?;
    std::fs::write(&args.onnx, &bytes)
        .with_context(|| format!("writing {}", args.onnx.display()))?;
    let nodes = onnx.graph.as_ref().map_or(0, |g| g.node.len());
    println!(
        "exported {} ({}) to {}: {nodes} ONNX nodes, opset {}, {} bytes",
        args.model.display(),
        file.origin,
        args.onnx.display(),
        kiln_onnx::export::EXPORT_OPSET,
        bytes.len()
    );
    Ok(())
}

/// `kiln model run`.
pub fn run_model(args: &RunArgs) -> anyhow::Result<()> {
    for out in &args.output {
        crate::output_paths::check_output_file("--output", out)?;
    }
    let mut file = load_model(&args.model)?;
    let inputs = args
        .input
        .iter()
        .map(|p| kiln_nn::npy::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = file.model.run(inputs)?;
    if outputs.len() != args.output.len() {
        bail!(
            "the model has {} output(s) but {} --output path(s) were given",
            outputs.len(),
            args.output.len()
        );
    }
    for (t, path) in outputs.iter().zip(&args.output) {
        kiln_nn::npy::write(path, t)?;
        println!("wrote {} {:?}", path.display(), t.shape());
    }
    Ok(())
}

/// `kiln model show`.
pub fn show(args: &ShowArgs) -> anyhow::Result<()> {
    let mut file = load_model(&args.model)?;
    println!("{}: {}", args.model.display(), file.origin);
    for line in kiln_nn::summary::layer_lines(&file.config)? {
        let indent = "  ".repeat(line.depth + 1);
        let params = if line.params > 0 {
            format!("  [{} params]", line.params)
        } else {
            String::new()
        };
        println!("{indent}{}: {}{params}", line.path, line.description);
    }
    let module = file.model.module();
    println!(
        "parameters: {}  buffers: {}",
        module.num_params(),
        module.num_buffers()
    );
    let shapes: Option<Vec<Vec<usize>>> = match (&args.input_shape, &file.inputs) {
        (Some(s), _) => Some(vec![s.clone()]),
        (None, Some(inputs)) => {
            for i in inputs {
                println!("input {}: {}", i.name, shape_text(&i.shape));
            }
            // A symbolic batch runs as 1; other unknown sizes need --input-shape.
            inputs
                .iter()
                .map(|i| {
                    i.shape
                        .iter()
                        .enumerate()
                        .map(|(k, d)| if k == 0 { Some(d.unwrap_or(1)) } else { *d })
                        .collect::<Option<Vec<usize>>>()
                })
                .collect()
        }
        (None, None) => {
            println!(
                "input shapes: not recorded in the file (give --input-shape to see the outputs')"
            );
            None
        }
    };
    if shapes.is_none() && file.inputs.is_some() {
        println!("output shapes: give --input-shape to fix the input's run-time sizes");
    }
    if let Some(shapes) = shapes {
        let zeros = shapes
            .iter()
            .map(|s| kiln_nn::tensor::zeros::<f32>(s))
            .collect();
        let outs = file
            .model
            .run(zeros)
            .with_context(|| format!("running the model on inputs of shape {shapes:?}"))?;
        for (k, o) in outs.iter().enumerate() {
            println!("output {k}: {:?}", o.shape());
        }
    }
    Ok(())
}

fn shape_text(shape: &[Option<usize>]) -> String {
    let dims: Vec<String> = shape
        .iter()
        .map(|d| d.map_or_else(|| "?".to_string(), |v| v.to_string()))
        .collect();
    format!("[{}]", dims.join(", "))
}
