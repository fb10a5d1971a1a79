//! Writes the `export_planner!`/`export_expander!`/`export_stitcher!`/`export_reviewer!` macros with the WIT
//! package inlined, so a plugin crate generates only its own world's exports and shares the
//! SDK's bindings for every host import (no path to the WIT files from the plugin crate).

use std::{env, fs, path::PathBuf};

const WIT: &str = "../../wit/v0.2.0/plugin.wit";
const VERSION: &str = "0.2.0";
const IMPORTS: [&str; 9] = [
    "types",
    "log",
    "progress",
    "project",
    "assets",
    "generation",
    "text",
    "vision",
    "media",
];

fn main() {
    println!("cargo::rerun-if-changed={WIT}");
    let wit = fs::read_to_string(WIT).expect("read the plugin WIT package");
    let with: String = IMPORTS
        .iter()
        .map(|name| {
            format!(
                "\"videosdgx:plugin/{name}@{VERSION}\": ::videosdgx_plugin_sdk::bindings::videosdgx::plugin::{name},\n"
            )
        })
        .collect();
    let mut out = String::new();
    for (world, iface, trait_name, func, args) in [
        (
            "planner",
            "planning",
            "Planner",
            "plan",
            "input: $crate::types::PlanInput) -> Result<$crate::types::Storyboard",
        ),
        (
            "expander",
            "expansion",
            "Expander",
            "expand",
            "shot: $crate::types::Shot, storyboard: $crate::types::Storyboard, model: $crate::types::ModelProfile) -> Result<$crate::types::ShotPrompt",
        ),
        (
            "stitcher",
            "stitching",
            "Stitcher",
            "stitch",
            "storyboard: $crate::types::Storyboard, clips: Vec<$crate::types::GeneratedClip>, output_name: String) -> Result<$crate::types::StitchResult",
        ),
        (
            "reviewer",
            "reviewing",
            "Reviewer",
            "review",
            "shot: $crate::types::Shot, prompt: $crate::types::ShotPrompt, take: $crate::types::Take, storyboard: $crate::types::Storyboard) -> Result<$crate::types::TakeReview",
        ),
    ] {
        let params: Vec<&str> = args
            .split(')')
            .next()
            .unwrap()
            .split(", ")
            .map(|p| p.split(':').next().unwrap())
            .collect();
        out += &format!(
            r#"
/// Exports `$plugin` (which implements [`{trait_name}`]) as the component's `{world}` world.
#[macro_export]
macro_rules! export_{world} {{
    ($plugin:ident) => {{
        #[doc(hidden)]
        mod __videosdgx_{world}_bindings {{
            ::videosdgx_plugin_sdk::wit_bindgen::generate!({{
                inline: {wit:?},
                world: "{world}",
                runtime_path: "::videosdgx_plugin_sdk::wit_bindgen::rt",
                with: {{ {with} }},
            }});
        }}
        impl __videosdgx_{world}_bindings::exports::videosdgx::plugin::{iface}::Guest for $plugin {{
            fn {func}({args}, $crate::types::PluginError> {{
                <$plugin as $crate::{trait_name}>::{func}({params})
            }}
        }}
        __videosdgx_{world}_bindings::export!($plugin with_types_in __videosdgx_{world}_bindings);
    }};
}}
"#,
            params = params.join(", "),
        );
    }
    let path = PathBuf::from(env::var("OUT_DIR").unwrap()).join("export_macros.rs");
    fs::write(path, out).expect("write export macros");
}
