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
    Ok(())
}
