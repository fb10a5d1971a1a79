//! Applying LoRAs to a model: every key of every file is matched to one of the model's weights
//! and checked against its shape first; only then do weights change. Merged (the default), a
//! weight becomes `W + Σ scale · up @ down` (and `+ strength · diff` for full deltas), computed in
//! f32 and cast back to the weight's dtype; at run time, each low-rank pair of a linear layer
//! becomes a side path of that layer instead, and the full deltas (not low rank) are merged.
//! `scale` is strength × alpha / rank, or the strength where a file gives no alpha.

use super::file::{LoraFile, LoraModule, looks_like};
use super::{LoraError, ShapeMismatch};
use crate::loader::Checkpoint;
use crate::models::{Linear, LowRank};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

/// One of a model's weights, as a LoRA may change it.
pub enum Weight<'a> {
    /// A linear layer: `{name}.weight` (`[out, in]`) and `{name}.bias`, named by
    /// [`Linear::name`]. It takes side paths at run time.
    Linear(&'a mut Linear),
    /// Any other tensor (norm scales, modulation tables, convolution kernels) under its
    /// checkpoint name: always merged.
    Tensor {
        name: String,
        tensor: &'a mut Tensor,
    },
}

pub type Visitor<'a> = dyn FnMut(Weight<'_>) -> Result<(), LoraError> + 'a;

/// A model LoRAs can adapt.
pub trait Adaptable {
    /// The model's class, named in errors.
    fn class_name(&self) -> &'static str;

    /// Calls `f` with each weight a LoRA may change, once.
    fn visit_weights(&mut self, f: &mut Visitor<'_>) -> Result<(), LoraError>;

    /// Other names published LoRA files use for the checkpoint tensor `name`.
    fn aliases(&self, name: &str) -> Vec<String>;

    fn lora_state(&mut self) -> &mut LoraState;

    /// Applies `loras` in `mode`, replacing whatever was applied before (the weights they touched
    /// are restored from the originals first). Applying what is already applied does nothing.
    fn set_loras(&mut self, loras: &[Lora], mode: LoraMode) -> Result<(), LoraError>
    where
        Self: Sized,
    {
        let mut state = std::mem::take(self.lora_state());
        let result = state.apply(self, loras, mode);
        *self.lora_state() = state;
        result
    }
}

/// A LoRA file with the strength to apply it at.
#[derive(Debug, Clone)]
pub struct Lora {
    pub file: Arc<LoraFile>,
    pub strength: f64,
}

/// How LoRAs join a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraMode {
    /// Added into the weights: no cost per step.
    #[default]
    Merge,
    /// Low-rank side paths of the linear layers: quick to switch, slower per step.
    Runtime,
}

/// Where a weight's original value is read back from when the LoRAs change.
enum Originals {
    /// The mapped checkpoint the model was loaded from.
    Checkpoint(Arc<Checkpoint>),
    /// Models built in memory (random weights): each weight is kept as it was before the first
    /// change.
    Memory(HashMap<String, Tensor>),
}

/// What LoRAs have done to one model, so that the next set starts from the originals.
pub struct LoraState {
    originals: Originals,
    /// Weights that differ from their originals.
    patched: BTreeSet<String>,
    /// Linear layers that carry side paths.
    adapted: BTreeSet<String>,
    /// What is applied now; `None` after a failure half-way (the next set restores everything
    /// it touched).
    applied: Option<(Vec<(PathBuf, f64)>, LoraMode)>,
}

impl Default for LoraState {
    fn default() -> Self {
        Self {
            originals: Originals::Memory(HashMap::new()),
            patched: BTreeSet::new(),
            adapted: BTreeSet::new(),
            applied: Some((Vec::new(), LoraMode::Merge)),
        }
    }
}

/// The weights of a model by every name a file may use for them.
struct Inventory {
    /// Checkpoint name and shape.
    weights: Vec<(String, Vec<usize>)>,
    /// Checkpoint names and aliases; `None` where a name is ambiguous.
    dotted: HashMap<String, Option<usize>>,
    /// Kohya's form of each: the module path with underscores, `.`, the leaf (`weight`).
    underscored: HashMap<String, Option<usize>>,
}

impl Inventory {
    fn of(model: &mut dyn Adaptable) -> Result<Self, LoraError> {
        let mut weights = Vec::new();
        model.visit_weights(&mut |w| {
            match w {
                Weight::Linear(linear) => {
                    let name = linear.name();
                    weights.push((format!("{name}.weight"), linear.dims().to_vec()));
                    if let Some(bias) = linear.bias() {
                        weights.push((format!("{name}.bias"), bias.dims().to_vec()));
                    }
                }
                Weight::Tensor { name, tensor } => weights.push((name, tensor.dims().to_vec())),
            }
            Ok(())
        })?;
        let mut dotted = HashMap::new();
        let mut underscored = HashMap::new();
        let insert = |map: &mut HashMap<String, Option<usize>>, key: String, i: usize| {
            map.entry(key)
                .and_modify(|slot: &mut Option<usize>| {
                    if *slot != Some(i) {
                        *slot = None;
                    }
                })
                .or_insert(Some(i));
        };
        for (i, (name, _)) in weights.iter().enumerate() {
            for alias in std::iter::once(name.clone()).chain(model.aliases(name)) {
                if let Some((module, leaf)) = alias.rsplit_once('.') {
                    insert(
                        &mut underscored,
                        format!("{}.{leaf}", module.replace('.', "_")),
                        i,
                    );
                }
                insert(&mut dotted, alias, i);
            }
        }
        Ok(Self {
            weights,
            dotted,
            underscored,
        })
    }

    /// The weight `leaf` (`weight`, `bias`, `modulation`) of a file's module.
    fn find(&self, module: &LoraModule, leaf: &str) -> Option<usize> {
        let map = if module.underscored {
            &self.underscored
        } else {
            &self.dotted
        };
        map.get(&format!("{}.{leaf}", module.path))
            .copied()
            .flatten()
    }
}

/// One change to one weight.
enum Delta {
    /// `scale · up @ down`, reshaped to the weight.
    LowRank {
        lora: usize,
        down: String,
        up: String,
        scale: f64,
    },
    /// `scale · tensor`.
    Full {
        lora: usize,
        key: String,
        scale: f64,
    },
}

impl Delta {
    fn lora(&self) -> usize {
        match self {
            Self::LowRank { lora, .. } | Self::Full { lora, .. } => *lora,
        }
    }

    /// The change in f32 on the weight's device.
    fn tensor(&self, loras: &[Lora], weight: &Tensor) -> Result<Tensor, LoraError> {
        let file = &loras[self.lora()].file;
        let device = weight.device();
        let candle = |source| LoraError::Tensor {
            path: file.path().to_path_buf(),
            source,
        };
        match self {
            Self::LowRank {
                down, up, scale, ..
            } => {
                let down = file.tensor(down, DType::F32, device)?;
                let up = file.tensor(up, DType::F32, device)?;
                let rank = down.dim(0).map_err(candle)?;
                let out = up.dim(0).map_err(candle)?;
                up.reshape((out, rank))
                    .and_then(|up| up.matmul(&down.reshape((rank, ()))?))
                    .and_then(|d| d.reshape(weight.shape()))
                    .and_then(|d| d * *scale)
                    .map_err(candle)
            }
            Self::Full { key, scale, .. } => {
                (file.tensor(key, DType::F32, device)? * *scale).map_err(candle)
            }
        }
    }
}

/// Every key of `file` matched to a weight and checked against its shape.
fn plan(
    index: usize,
    lora: &Lora,
    inventory: &Inventory,
    class: &'static str,
) -> Result<Vec<(usize, Delta)>, LoraError> {
    let file = &lora.file;
    let path = || file.path().to_path_buf();
    let mut unmatched: Vec<String> = file.unknown_keys().to_vec();
    let mut deltas = Vec::new();
    let mut matched = false;
    let check = |key: &str, weight: usize, fits: bool| -> Result<(), LoraError> {
        if fits {
            return Ok(());
        }
        Err(LoraError::Shape(Box::new(ShapeMismatch {
            path: path(),
            key: key.to_string(),
            class,
            weight: inventory.weights[weight].0.clone(),
            expected: inventory.weights[weight].1.clone(),
            found: file.shape(key).to_vec(),
        })))
    };
    // A full delta of `module`'s weight `leaf`; `false` when the model has no such weight.
    let full = |module: &LoraModule, key: &String, leaf: &str, deltas: &mut Vec<(usize, Delta)>| {
        match inventory.find(module, leaf) {
            Some(w) => {
                check(key, w, file.shape(key) == inventory.weights[w].1.as_slice())?;
                deltas.push((
                    w,
                    Delta::Full {
                        lora: index,
                        key: key.clone(),
                        scale: lora.strength,
                    },
                ));
                Ok::<bool, LoraError>(true)
            }
            None => Ok(false),
        }
    };
    for module in file.modules() {
        match (&module.down, &module.up) {
            (Some(down), Some(up)) => match inventory.find(module, "weight") {
                Some(w) => {
                    matched = true;
                    let shape = &inventory.weights[w].1;
                    let (d, u) = (file.shape(down), file.shape(up));
                    let fan_in = |dims: &[usize]| dims[1..].iter().product::<usize>();
                    check(down, w, d.len() >= 2 && fan_in(d) == fan_in(shape))?;
                    check(
                        up,
                        w,
                        u.len() >= 2
                            && u[0] == shape[0]
                            && u[1] == d[0]
                            && u[2..].iter().all(|&n| n == 1),
                    )?;
                    let rank = d[0];
                    let scale = match file.alpha(module, rank)? {
                        Some(alpha) => lora.strength * alpha / rank as f64,
                        None => lora.strength,
                    };
                    deltas.push((
                        w,
                        Delta::LowRank {
                            lora: index,
                            down: down.clone(),
                            up: up.clone(),
                            scale,
                        },
                    ));
                    if let Some(bias) = &module.up_bias {
                        // PEFT's `lora_B.bias` joins the pair's output, so it takes its scale.
                        match inventory.find(module, "bias") {
                            Some(b) => {
                                check(
                                    bias,
                                    b,
                                    file.shape(bias) == inventory.weights[b].1.as_slice(),
                                )?;
                                deltas.push((
                                    b,
                                    Delta::Full {
                                        lora: index,
                                        key: bias.clone(),
                                        scale,
                                    },
                                ));
                            }
                            None => unmatched.push(bias.clone()),
                        }
                    }
                }
                None => unmatched.extend(
                    [
                        Some(down),
                        Some(up),
                        module.up_bias.as_ref(),
                        module.alpha.as_ref(),
                    ]
                    .into_iter()
                    .flatten()
                    .cloned(),
                ),
            },
            (Some(key), None) | (None, Some(key)) => {
                return Err(LoraError::IncompletePair {
                    path: path(),
                    key: key.clone(),
                    missing: if module.down.is_some() {
                        "lora_up / lora_B"
                    } else {
                        "lora_down / lora_A"
                    },
                });
            }
            (None, None) => {
                if let Some(key) = &module.up_bias {
                    return Err(LoraError::IncompletePair {
                        path: path(),
                        key: key.clone(),
                        missing: "lora_A / lora_B",
                    });
                }
                // An alpha without its pair changes nothing; it is a stray key unless its
                // module exists.
                if let Some(alpha) = &module.alpha
                    && inventory.find(module, "weight").is_none()
                {
                    unmatched.push(alpha.clone());
                }
            }
        }
        for (key, leaf) in [
            (&module.diff, "weight"),
            (&module.diff_bias, "bias"),
            (&module.diff_modulation, "modulation"),
        ] {
            if let Some(key) = key {
                if full(module, key, leaf, &mut deltas)? {
                    matched = true;
                } else {
                    unmatched.push(key.clone());
                }
            }
        }
    }
    if !matched {
        let keys: Vec<&str> = file.keys().collect();
        let looks_like = match looks_like(keys.iter().copied()) {
            Some(arch) => format!("its keys look like a LoRA for {arch} (e.g. `{}`)", keys[0]),
            None => format!(
                "its keys (e.g. {}) belong to another architecture",
                keys.iter()
                    .take(3)
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return Err(LoraError::Foreign {
            path: path(),
            class,
            keys: keys.len(),
            looks_like,
        });
    }
    if !unmatched.is_empty() {
        unmatched.sort();
        return Err(LoraError::Unmatched {
            path: path(),
            class,
            keys: unmatched,
        });
    }
    // A zero strength (or alpha) changes nothing: nothing is computed for it.
    deltas.retain(|(_, delta)| match delta {
        Delta::LowRank { scale, .. } | Delta::Full { scale, .. } => *scale != 0.0,
    });
    Ok(deltas)
}

impl LoraState {
    /// The state of a model loaded from `checkpoint`, which stays mapped to restore from.
    pub fn from_checkpoint(checkpoint: Arc<Checkpoint>) -> Self {
        Self {
            originals: Originals::Checkpoint(checkpoint),
            ..Self::default()
        }
    }

    fn apply(
        &mut self,
        model: &mut dyn Adaptable,
        loras: &[Lora],
        mode: LoraMode,
    ) -> Result<(), LoraError> {
        let request: Vec<(PathBuf, f64)> = loras
            .iter()
            .map(|l| (l.file.path().to_path_buf(), l.strength))
            .collect();
        if self.applied.as_ref() == Some(&(request.clone(), mode)) {
            return Ok(());
        }
        let class = model.class_name();
        let inventory = Inventory::of(model)?;
        let mut plans: BTreeMap<String, Vec<Delta>> = BTreeMap::new();
        for (i, lora) in loras.iter().enumerate() {
            for (w, delta) in plan(i, lora, &inventory, class)? {
                plans
                    .entry(inventory.weights[w].0.clone())
                    .or_default()
                    .push(delta);
            }
        }

        self.applied = None;
        model.visit_weights(&mut |w| match w {
            Weight::Linear(linear) => {
                let name = linear.name().to_string();
                let weight_name = format!("{name}.weight");
                let mut merged = Vec::new();
                let mut adapters = Vec::new();
                // A quantized layer takes low-rank LoRAs as side paths whatever the mode: merged,
                // a LoRA's small changes would mostly round away in float8 or 4 bits.
                let quantized = linear.dense_weight().is_none();
                for delta in plans.get(&weight_name).into_iter().flatten() {
                    match delta {
                        Delta::LowRank {
                            lora,
                            down,
                            up,
                            scale,
                        } if mode == LoraMode::Runtime || quantized => {
                            adapters.push(side_path(&loras[*lora].file, down, up, *scale, linear)?)
                        }
                        Delta::Full { lora, key, .. } if quantized => {
                            return Err(LoraError::Unsupported {
                                path: loras[*lora].file.path().to_path_buf(),
                                reason: format!(
                                    "`{key}` is a whole-weight change, which cannot merge into \
                                     `{weight_name}`, kept quantized (load the model without \
                                     quantization)"
                                ),
                            });
                        }
                        _ => merged.push(delta),
                    }
                }
                if let Some(dense) = linear.dense_weight().cloned()
                    && let Some(w) = self.merged(&weight_name, &dense, &merged, loras)?
                {
                    linear.set_weight(w);
                }
                if let Some(bias) = linear.bias().cloned() {
                    let bias_name = format!("{name}.bias");
                    let deltas: Vec<&Delta> = plans.get(&bias_name).into_iter().flatten().collect();
                    if let Some(b) = self.merged(&bias_name, &bias, &deltas, loras)? {
                        linear.set_bias(b);
                    }
                }
                if !adapters.is_empty() || self.adapted.contains(&name) {
                    if adapters.is_empty() {
                        self.adapted.remove(&name);
                    } else {
                        self.adapted.insert(name);
                    }
                    linear.set_adapters(adapters);
                }
                Ok(())
            }
            Weight::Tensor { name, tensor } => {
                let deltas: Vec<&Delta> = plans.get(&name).into_iter().flatten().collect();
                if let Some(t) = self.merged(&name, tensor, &deltas, loras)? {
                    *tensor = t;
                }
                Ok(())
            }
        })?;
        self.applied = Some((request, mode));
        Ok(())
    }

    /// The new value of weight `name` (now `current`): its original plus `deltas`, or `None`
    /// when it is original and stays so.
    fn merged(
        &mut self,
        name: &str,
        current: &Tensor,
        deltas: &[&Delta],
        loras: &[Lora],
    ) -> Result<Option<Tensor>, LoraError> {
        if deltas.is_empty() && !self.patched.contains(name) {
            return Ok(None);
        }
        let original = match &mut self.originals {
            Originals::Checkpoint(checkpoint) => checkpoint.load(
                name,
                Some(current.shape()),
                current.dtype(),
                current.device(),
            )?,
            Originals::Memory(kept) => kept
                .entry(name.to_string())
                .or_insert_with(|| current.clone())
                .clone(),
        };
        if deltas.is_empty() {
            self.patched.remove(name);
            return Ok(Some(original));
        }
        let candle = |source| LoraError::Tensor {
            path: loras[deltas[0].lora()].file.path().to_path_buf(),
            source,
        };
        let mut sum = original.to_dtype(DType::F32).map_err(candle)?;
        for delta in deltas {
            sum = (sum + delta.tensor(loras, current)?).map_err(candle)?;
        }
        self.patched.insert(name.to_string());
        Ok(Some(sum.to_dtype(current.dtype()).map_err(candle)?))
    }
}

/// The side path of the low-rank pair `down`, `up` of `file` on a linear layer, in the layer's
/// dtype.
fn side_path(
    file: &LoraFile,
    down: &str,
    up: &str,
    scale: f64,
    layer: &Linear,
) -> Result<LowRank, LoraError> {
    let (dtype, device) = (layer.dtype(), layer.device());
    let down = file.tensor(down, dtype, device)?;
    let up = file.tensor(up, dtype, device)?;
    let candle = |source| LoraError::Tensor {
        path: file.path().to_path_buf(),
        source,
    };
    let rank = down.dim(0).map_err(candle)?;
    Ok(LowRank {
        down: down.reshape((rank, ())).map_err(candle)?,
        up: up
            .reshape((up.dim(0).map_err(candle)?, rank))
            .map_err(candle)?,
        scale,
    })
}
