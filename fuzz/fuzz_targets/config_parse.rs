//! Any text as a config file: parse and validation give errors, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfs_wire::config::ConfigFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(file) = toml::from_str::<ConfigFile>(text) {
            let _ = file.validate();
            // What we write, we read back.
            let again: ConfigFile = toml::from_str(&file.to_toml()).expect("round trip");
            assert_eq!(again, file);
        }
    }
});
