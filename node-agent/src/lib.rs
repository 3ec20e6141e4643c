//! The sandpool node agent: owns the sandboxes of one node.
//!
//! * [`agent`]: warm sandboxes, injection, release, recovery, node events
//! * [`containerd`]: containerd gRPC (images, snapshots, containers, tasks)
//! * [`daemon`]: a private containerd for the standalone mode
//! * [`image`]: local OCI images (busybox-static, Debian + python3)
//! * [`registry`]: pulls from OCI registries (into containerd's content store)
//! * [`net`]: per-sandbox netns + CNI bridge; [`egress`]: nftables egress policy in it
//! * [`spec`], [`quantity`], [`limits`]: pure OCI spec / resource translation and limit policy
//! * [`cgroup`]: a running sandbox's limits changed in place
//! * [`checkpoint`], [`tunnel`]: checkpoint store; reaching network-less sandboxes
//! * [`mounts`], [`volumes`]: dynamic mounts; named volumes under the volume root
//! * [`service`]: the `sandpool.v1.NodeAgent` gRPC service
pub mod agent;
pub mod archive;
pub mod cgroup;
pub mod checkpoint;
pub mod containerd;
pub mod credproxy;
pub mod cri;
pub mod daemon;
pub mod dnsproxy;
pub mod egress;
pub mod error;
pub mod image;
pub mod imageconfig;
pub mod limits;
pub mod mounts;
pub mod net;
pub mod quantity;
pub mod registry;
mod retry;
pub mod service;
pub mod spec;
pub mod testkit;
pub mod tunnel;
pub mod volumes;
