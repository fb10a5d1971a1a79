//! `videosdgx plugins`: install (showing and deciding each requested capability), list,
//! show, enable, disable, uninstall and audit the sandboxed plugins.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use videosdgx_plugin_host::{Capability, Manifest};
use videosdgx_studio::App;
use videosdgx_studio::plugins::registry::{self, InstalledPlugin};

#[derive(Args, Debug)]
pub struct PluginsArgs {
    #[command(subcommand)]
    command: PluginsCommand,
}

#[derive(Subcommand, Debug)]
enum PluginsCommand {
    /// Install a plugin component after deciding which capabilities it gets.
    Install {
        /// The component (.wasm, built for wasm32-wasip2).
        file: PathBuf,
        /// Its plugin.toml.
        #[arg(long)]
        manifest: PathBuf,
        /// Capabilities to grant without asking (comma-separated).
        #[arg(long, value_delimiter = ',')]
        grant: Vec<Capability>,
        /// Capabilities to refuse without asking (comma-separated).
        #[arg(long, value_delimiter = ',')]
        deny: Vec<Capability>,
        #[arg(long)]
        json: bool,
    },
    /// List installed plugins.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one plugin: manifest, grants, state.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Allow an installed plugin to run again.
    Enable {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Keep a plugin installed but refuse to run it.
    Disable {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a plugin (its audit records are kept).
    Uninstall { id: String },
    /// Every host call plugins made, allowed or denied.
    Audit {
        /// Only this plugin's calls.
        id: Option<String>,
        /// The newest this many calls.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: PluginsArgs, app: &App) -> anyhow::Result<()> {
    match args.command {
        PluginsCommand::Install {
            file,
            manifest,
            grant,
            deny,
            json,
        } => {
            let manifest_text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("reading the manifest {}", manifest.display()))?;
            let wasm = std::fs::read(&file)
                .with_context(|| format!("reading the component {}", file.display()))?;
            let parsed = Manifest::parse(&manifest_text)
                .with_context(|| format!("{} is refused", manifest.display()))?;
            check_flags(&parsed, &grant, &deny)?;
            if !json {
                describe_request(&parsed);
            }
            let interactive = std::io::stdin().is_terminal() && !json;
            let mut prompt_error = None;
            let installed =
                registry::install(&app.db, &app.plugins, &manifest_text, &wasm, |capability| {
                    if grant.contains(&capability) {
                        return true;
                    }
                    if deny.contains(&capability) || !interactive {
                        return false;
                    }
                    ask(capability).unwrap_or_else(|e| {
                        prompt_error = Some(e);
                        false
                    })
                })
                .with_context(|| format!("{} is refused", file.display()))?;
            if let Some(e) = prompt_error {
                return Err(e.context("reading the answer"));
            }
            print(&installed, json, |p| {
                format!("installed {}\n{}", p.id, detail(p))
            })
        }
        PluginsCommand::List { json } => {
            let plugins = registry::list(&app.db)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&plugins)?);
            } else if plugins.is_empty() {
                println!("no plugins installed");
            } else {
                for p in &plugins {
                    let state = if p.enabled { "enabled" } else { "disabled" };
                    let origin = if p.first_party { "first-party" } else { "" };
                    println!(
                        "{:<24} {:<10} {:<9} {:<9} {:<12} {}",
                        p.id, p.version, p.world, state, origin, p.description
                    );
                }
            }
            Ok(())
        }
        PluginsCommand::Show { id, json } => print(&registry::get(&app.db, &id)?, json, detail),
        PluginsCommand::Enable { id, json } => {
            print(&registry::set_enabled(&app.db, &id, true)?, json, |p| {
                format!("enabled {}", p.id)
            })
        }
        PluginsCommand::Disable { id, json } => {
            print(&registry::set_enabled(&app.db, &id, false)?, json, |p| {
                format!("disabled {}", p.id)
            })
        }
        PluginsCommand::Uninstall { id } => {
            registry::uninstall(&app.db, &app.plugins, &id)?;
            println!("uninstalled {id}");
            Ok(())
        }
        PluginsCommand::Audit { id, limit, json } => {
            let mut records = registry::audit(&app.db, id.as_deref(), limit)?;
            if let Some(id) = &id
                && records.is_empty()
                && registry::get(&app.db, id).is_err()
            {
                bail!("plugin `{id}` is not installed and has no audit records");
            }
            // Oldest first, like a log.
            records.reverse();
            if json {
                println!("{}", serde_json::to_string_pretty(&records)?);
            } else {
                for r in &records {
                    let verdict = match (&r.error, r.allowed) {
                        (_, false) => "DENIED".to_string(),
                        (Some(e), true) => format!("error: {e}"),
                        (None, true) => "ok".to_string(),
                    };
                    println!(
                        "{} {:<20} {:<26} {:<8} {}",
                        r.at, r.plugin_id, r.function, verdict, r.detail
                    );
                }
            }
            Ok(())
        }
    }
}

/// --grant/--deny may only name what the plugin asks for, and not both ways.
fn check_flags(
    manifest: &Manifest,
    grant: &[Capability],
    deny: &[Capability],
) -> anyhow::Result<()> {
    for capability in grant.iter().chain(deny) {
        if !manifest.capabilities.contains(capability) {
            bail!(
                "`{capability}` is not requested by plugin `{}` (it asks for: {})",
                manifest.id,
                requested(manifest)
            );
        }
    }
    let granted: BTreeSet<_> = grant.iter().collect();
    if let Some(both) = deny.iter().find(|c| granted.contains(c)) {
        bail!("`{both}` is both granted and denied");
    }
    Ok(())
}

fn requested(manifest: &Manifest) -> String {
    if manifest.capabilities.is_empty() {
        return "nothing".into();
    }
    manifest
        .capabilities
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_request(manifest: &Manifest) {
    println!(
        "{} {} ({} plugin, API {})",
        manifest.name, manifest.version, manifest.world, manifest.api_version
    );
    if !manifest.description.is_empty() {
        println!("  {}", manifest.description);
    }
    if manifest.capabilities.is_empty() {
        println!("It asks for no capabilities.");
    } else {
        println!("It asks to:");
        for capability in &manifest.capabilities {
            println!("  {:<16} {}", capability.as_str(), capability.explanation());
        }
    }
}

fn ask(capability: Capability) -> anyhow::Result<bool> {
    print!(
        "Grant `{capability}` ({})? [y/N] ",
        capability.explanation()
    );
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
}

fn detail(p: &InstalledPlugin) -> String {
    let list = |caps: &[String]| {
        if caps.is_empty() {
            "none".to_string()
        } else {
            caps.join(", ")
        }
    };
    format!(
        "id:          {}\nname:        {}\nversion:     {}\nworld:       {}\napi-version: {}\nenabled:     {}\ngranted:     {}\ndenied:      {}\nsha256:      {}\ndescription: {}",
        p.id,
        p.name,
        p.version,
        p.world,
        p.api_version,
        p.enabled,
        list(&p.granted),
        list(&p.denied),
        p.component_sha256,
        p.description
    )
}

fn print(
    p: &InstalledPlugin,
    json: bool,
    text: impl Fn(&InstalledPlugin) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(p)?);
    } else {
        println!("{}", text(p));
    }
    Ok(())
}
