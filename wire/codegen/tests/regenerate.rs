//! The committed generated code must be exactly what the schema produces.

#[test]
fn regenerate_matches_committed() {
    let schema_dir = ringfs_wire_codegen::wire_dir().join("schema");
    let fresh = ringfs_wire_codegen::generate(&schema_dir).expect("schema must translate");
    let path = ringfs_wire_codegen::generated_path();
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    if fresh != committed {
        let first_diff = fresh
            .lines()
            .zip(committed.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| fresh.lines().count().min(committed.lines().count()));
        panic!(
            "{} is out of date with wire/schema (first difference at line {}); \
             run `cargo run -p ringfs-wire-codegen` and commit the result",
            path.display(),
            first_diff + 1
        );
    }
}
