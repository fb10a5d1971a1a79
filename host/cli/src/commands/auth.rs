//! `videosdgx auth …`: manages the access token that remote browsers and API clients use when
//! the studio is served on a non-loopback address.

use clap::Subcommand;
use serde::Serialize;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Replace the access token (signing out every browser) and print the new one once.
    ResetToken {
        /// Print `{"token": "..."}`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct NewToken {
    token: String,
}

pub fn run(data: &Path, cmd: AuthCommand) -> anyhow::Result<()> {
    match cmd {
        AuthCommand::ResetToken { json } => {
            let token = videosdgx_studio::auth::reset_token(data)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&NewToken { token })?);
            } else {
                println!(
                    "New access token (shown only this once; every browser must sign in again):\n{token}"
                );
            }
            Ok(())
        }
    }
}
