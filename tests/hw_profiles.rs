//! Every hardware profile in hw-profiles/ loads through the same layering the broker uses
//! (`--profile`) and passes validation, so a profile with a typo or a bad value never ships.

use ringcast::config::load_layers;
use std::path::PathBuf;

#[test]
fn every_profile_loads_and_validates() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hw-profiles");
    let mut profiles: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("hw-profiles/ exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    profiles.sort();
    assert!(
        profiles.len() >= 3,
        "expected at least 3 profiles, found {profiles:?}"
    );
    for path in &profiles {
        let config = load_layers(&[path])
            .unwrap_or_else(|e| panic!("{} does not load: {e}", path.display()));
        config
            .validate()
            .unwrap_or_else(|e| panic!("{} does not validate: {e}", path.display()));
        let mut cpus = config.cpus.clone();
        cpus.sort_unstable();
        cpus.dedup();
        assert_eq!(
            cpus.len(),
            config.cpus.len(),
            "{}: a CPU is listed twice",
            path.display()
        );
    }
}
