//! W3C trace context across the gateway's hop to the scheduler: a public
//! gRPC call carrying a `traceparent` reaches the scheduler in a span of its
//! own within the caller's trace. In a test binary of its own: the test
//! installs a thread-local tracing subscriber, and tracing's per-callsite
//! interest cache is global, so tests running beside it in other threads
//! could leave the gateway's spans disabled (a flake seen once on main).

use sandpool_gateway::Gateway;
use sandpool_proto::public::{self as api, sandboxes_client::SandboxesClient};
use tonic::Request;

mod support;
use support::FakeScheduler;

const ADMIN: &str = "platform-key";

/// Calls as the platform's admin key.
fn bearer(mut r: Request<()>) -> Result<Request<()>, tonic::Status> {
    let v = format!("Bearer {ADMIN}").parse().expect("ascii");
    r.metadata_mut().insert("authorization", v);
    Ok(r)
}

#[tokio::test]
async fn the_callers_trace_context_reaches_the_scheduler() {
    use opentelemetry::trace::TracerProvider as _;
    use sandpool_proto::v1::scheduler_server::SchedulerServer;
    use tracing_subscriber::layer::SubscriberExt;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);

    // the scheduler records the traceparent of each call it gets
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let fake = FakeScheduler::default();
    fake.add_claim(sandpool_proto::v1::Claim {
        claim_id: "sb-t".into(),
        state: sandpool_proto::v1::ClaimState::Bound as i32,
        ..Default::default()
    });
    let svc = SchedulerServer::with_interceptor(fake, move |r: Request<()>| {
        let tp = r
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok());
        record.lock().push(tp.unwrap_or_default().to_string());
        Ok(r)
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    let ch = tonic::transport::Endpoint::from_shared(addr)
        .expect("endpoint")
        .connect_lazy();
    let client = sandpool_proto::v1::scheduler_client::SchedulerClient::with_interceptor(
        ch,
        Default::default(),
    );
    let app = sandpool_gateway::app(Gateway::new(client, &[ADMIN.to_string()]));
    let mut c = SandboxesClient::with_interceptor(app, bearer);
    let mut req = Request::new(api::GetSandboxRequest { id: "sb-t".into() });
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    req.metadata_mut()
        .insert("traceparent", parent.parse().expect("ascii"));
    c.get(req).await.expect("get");
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && seen[0] != parent,
        "the scheduler call continues the caller's trace in a span of its own: {seen:?}"
    );
}
