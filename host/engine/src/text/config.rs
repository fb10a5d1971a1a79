//! Config fields the language-model families spell alike: the attention kind of each layer
//! (`layer_types`), and rotary-embedding settings as transformers 5 standardises them
//! (`rope_parameters`, one dict or one per layer type) and as older `config.json` files on the hub
//! still spell them (`rope_theta`, `rope_scaling`, Gemma 3's `rope_local_base_freq`). Only the
//! rope types whose frequencies the engine computes are accepted; any other is refused by name
//! instead of silently mis-rotating.

use super::decoder::RopeParams;
use serde::Deserialize;

/// One `rope_parameters` entry (`rope_scaling` in older files, where the type may be `type`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RopeEntry {
    #[serde(alias = "type")]
    pub rope_type: Option<String>,
    pub rope_theta: Option<f64>,
    pub factor: Option<f64>,
}

impl RopeEntry {
    /// The frequencies' parameters, with `theta` where the entry names none.
    pub fn resolve(&self, theta: f64) -> Result<RopeParams, String> {
        let theta = self.rope_theta.unwrap_or(theta);
        let linear_factor = match self.rope_type.as_deref().unwrap_or("default") {
            "default" => 1.0,
            "linear" => self.factor.ok_or("rope_type `linear` needs a `factor`")?,
            other => {
                return Err(format!(
                    "rope_type `{other}` is not supported (supported: default, linear)"
                ));
            }
        };
        if !(theta > 0.0 && linear_factor > 0.0) {
            return Err(format!(
                "rope_theta {theta} and factor {linear_factor} must be positive"
            ));
        }
        Ok(RopeParams {
            theta,
            linear_factor,
        })
    }
}

/// `rope_parameters` as saved: one entry for every layer, or one per layer type.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RopeParameters {
    PerLayerType(std::collections::BTreeMap<String, Option<RopeEntry>>),
    Single(RopeEntry),
}

impl RopeParameters {
    /// The entry for `layer_type` (`full_attention`, `sliding_attention`).
    pub fn entry(&self, layer_type: &str) -> Option<RopeEntry> {
        match self {
            Self::Single(entry) => Some(entry.clone()),
            Self::PerLayerType(map) => map.get(layer_type).cloned().flatten(),
        }
    }
}

/// `layer_types` as given (one per layer), or derived per layer index by the family's rule.
pub fn layer_types(
    given: Option<&[String]>,
    num_hidden_layers: usize,
    derive: impl Fn(usize) -> &'static str,
) -> Result<Vec<String>, String> {
    match given {
        Some(types) if types.len() == num_hidden_layers => Ok(types.to_vec()),
        Some(types) => Err(format!(
            "layer_types has {} entries for {num_hidden_layers} layers",
            types.len()
        )),
        None => Ok((0..num_hidden_layers)
            .map(|i| derive(i).to_string())
            .collect()),
    }
}
