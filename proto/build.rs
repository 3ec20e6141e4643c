fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/sandpool/v1/runtime.proto",
        "proto/sandpool/v1/node_agent.proto",
        "proto/sandpool/v1/scheduler.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // stored as JSON in container labels with the rest of the template
        .type_attribute(
            "sandpool.v1.EgressPolicy",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .type_attribute(
            "sandpool.v1.EgressRule",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        // credentials: a Debug of hand (lib.rs) that hides the password
        .skip_debug(["sandpool.v1.ImageAuth"])
        .compile_protos(&protos, &["proto"])?;
    // sandboxd's ProcessService (agent-sandbox KEP-539.2), served by the
    // runtime for the k8s-agent-sandbox SDK: its own package, process.v1.
    let sandboxd = ["proto/sandboxd/process/v1/process.proto"];
    for p in sandboxd {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&sandboxd, &["proto"])?;
    // The public API: its own package and a descriptor set of its own (for
    // server reflection and the breaking-change test).
    let public = ["proto/sandpool/v1/public/sandboxes.proto"];
    for p in public {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(out.join("sandpool_public_descriptor.bin"))
        .compile_protos(&public, &["proto"])?;
    Ok(())
}
