//! `videosdgx project ...`: project records.

use super::Output;
use clap::Subcommand;
use videosdgx_studio::loras::{self, ChosenLora, LoraChoice, Scope};
use videosdgx_studio::{App, projects};

#[derive(Subcommand, Debug)]
pub enum ProjectCommand {
    /// Create a project and print it.
    Create {
        name: String,
        #[command(flatten)]
        out: Output,
    },
    /// List projects.
    List {
        #[command(flatten)]
        out: Output,
    },
    /// Show one project.
    Show {
        id: i64,
        #[command(flatten)]
        out: Output,
    },
    /// Rename a project.
    Rename {
        id: i64,
        name: String,
        #[command(flatten)]
        out: Output,
    },
    /// Whether the project's shots start from keyframes (character looks, then a still per
    /// shot, then image-to-video); by default on when an image model and an image-to-video
    /// model are installed.
    Keyframes {
        id: i64,
        #[arg(value_parser = ["on", "off"])]
        setting: String,
        #[command(flatten)]
        out: Output,
    },
    /// Show the LoRAs chosen for the project (applied to every shot), or replace them with the
    /// LoRA assets given as `ASSET_ID[:STRENGTH]` (`ASSET_ID:HIGH,LOW` for Wan 2.2's two
    /// experts); `--clear` removes them all.
    Loras {
        id: i64,
        #[arg(conflicts_with = "clear")]
        loras: Vec<LoraChoice>,
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        out: Output,
    },
    /// Delete a project with its storyboards and shots (its assets stay in the library).
    Delete { id: i64 },
}

fn line(p: &projects::Project) -> String {
    format!("{}\t{}\t{}", p.id, p.name, p.created_at)
}

pub fn run(app: &App, cmd: ProjectCommand) -> anyhow::Result<()> {
    match cmd {
        ProjectCommand::Create { name, out } => {
            out.print(&projects::create_project(&app.db, &name)?, line)
        }
        ProjectCommand::List { out } => out.print(&projects::list_projects(&app.db)?, |ps| {
            ps.iter().map(line).collect::<Vec<_>>().join("\n")
        }),
        ProjectCommand::Show { id, out } => out.print(&projects::get_project(&app.db, id)?, line),
        ProjectCommand::Rename { id, name, out } => {
            let fields = projects::ProjectFields {
                name: Some(name),
                ..Default::default()
            };
            out.print(&projects::update_project(&app.db, id, &fields)?, line)
        }
        ProjectCommand::Keyframes { id, setting, out } => {
            let fields = projects::ProjectFields {
                keyframes: Some(setting == "on"),
                ..Default::default()
            };
            out.print(&projects::update_project(&app.db, id, &fields)?, line)
        }
        ProjectCommand::Loras {
            id,
            loras: chosen,
            clear,
            out,
        } => {
            let scope = Scope::Project(id);
            let listed = if clear || !chosen.is_empty() {
                loras::set(&app.db, &scope, &chosen)?
            } else {
                loras::list(&app.db, &scope)?
            };
            out.print(&listed, |ls: &Vec<ChosenLora>| {
                ls.iter()
                    .map(|l| {
                        let low = l.strength_2.map(|s| format!(",{s}")).unwrap_or_default();
                        format!("{}\t{}\t{}{low}", l.asset_id, l.name, l.strength)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        ProjectCommand::Delete { id } => {
            projects::delete_project(&app.db, id)?;
            eprintln!("deleted project {id}");
            Ok(())
        }
    }
}
