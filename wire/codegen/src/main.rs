//! `cargo run -p ringfs-wire-codegen`: rewrite wire/src/generated.rs from the schema.

use std::process::ExitCode;

fn main() -> ExitCode {
    let schema_dir = ringfs_wire_codegen::wire_dir().join("schema");
    let code = match ringfs_wire_codegen::generate(&schema_dir) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringfs-wire-codegen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = ringfs_wire_codegen::generated_path();
    if let Err(e) = std::fs::write(&out, code) {
        eprintln!("ringfs-wire-codegen: cannot write {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    println!("wrote {}", out.display());
    ExitCode::SUCCESS
}
