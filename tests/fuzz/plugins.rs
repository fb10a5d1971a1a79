//! Plugin targets: the manifest (`plugin.toml`) a user uploads, and the first-party planner's
//! screenplay parser, which reads whatever script the user or a language model wrote.

#[path = "../../plugins/storyboard-planner/src/screenplay.rs"]
#[allow(dead_code)] // the planner reads every field; this target only parses
mod screenplay;

use crate::driver::Run;
use videosdgx_plugin_host::Manifest;

pub const TOML_TOKENS: &[&[u8]] = &[
    b"\"",
    b"'''",
    b"\"\"\"",
    b"=",
    b"[",
    b"]",
    b"[[x]]",
    b"{",
    b"}",
    b",",
    b"\n",
    b"#",
    b"\\u0000",
    b"id",
    b"version",
    b"api-version",
    b"world",
    b"capabilities",
    b"\"text-generation\"",
    b"\"assets:read\"",
    b"\"0.2.0\"",
    b"\"99999999999999999999.0.0\"",
    b"\"planner\"",
    b"1979-05-27T07:32:00Z",
    b"inf",
    b"nan",
];

pub const SCREENPLAY_TOKENS: &[&[u8]] = &[
    b"\n\n",
    b"\n",
    b"# ",
    b"## ",
    b"INT. ",
    b"EXT. ",
    b"INT./EXT. ",
    b" - DAY",
    b" - NIGHT",
    b"CLOSE ON ",
    b"EXTREME CLOSE-UP",
    b"WIDE SHOT:",
    b"PAN LEFT",
    b"DOLLY IN",
    b"CUT TO:",
    b"DISSOLVE TO:",
    b"FADE TO BLACK.",
    b"(",
    b")",
    b"(V.O.)",
    b"MARA",
    b":",
    b" - ",
    "\u{202e}".as_bytes(),
    b"\xcc\x81",
    b"\t",
    b"\r\n",
];

pub fn manifest() -> Run {
    Box::new(|input| {
        if let Ok(text) = std::str::from_utf8(input) {
            let _ = Manifest::parse(text);
        }
    })
}

pub fn screenplay() -> Run {
    Box::new(|input| {
        let _ = screenplay::parse(&String::from_utf8_lossy(input));
    })
}
