//! Installs the tiny random Wan pipelines and language models of tests/fixtures as a studio's
//! models, the way a user copies a model directory into `DATA/models/`.

use std::path::{Path, PathBuf};

/// Copies `tests/fixtures/<fixture>` to `<data>/models/<fixture>`.
pub fn install_tiny_model(data: &Path, fixture: &str) {
    install_as(data, fixture, fixture);
}

/// Copies `tests/fixtures/<fixture>` to `<data>/models/<name>`.
pub fn install_as(data: &Path, fixture: &str, name: &str) {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    copy_dir(&fixtures.join(fixture), &data.join("models").join(name));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
