use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_proto::{
    op::Query,
    rr::{Name, Record, RecordType, rdata},
};
use parking_lot::Mutex;
use sandpool_core::egress::EgressRule;

use super::{server::*, *};

fn policy(default: EgressAction, rules: &[(EgressAction, &str)]) -> EgressPolicy {
    EgressPolicy {
        default_action: default,
        rules: rules
            .iter()
            .map(|(a, t)| EgressRule {
                action: *a,
                cidr: (*t).into(),
                port: 0,
            })
            .collect(),
    }
}

fn query(id: u16, names: &[&str]) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_recursion_desired(true);
    for n in names {
        m.add_query(Query::query(
            Name::from_ascii(n).expect("name"),
            RecordType::A,
        ));
    }
    m.to_vec().expect("encode")
}

fn parse(b: &[u8]) -> Message {
    Message::from_vec(b).expect("a DNS message")
}

fn allow_one() -> EgressPolicy {
    use EgressAction::{Allow, Deny};
    policy(Deny, &[(Allow, "allowed.test"), (Allow, "*.sub.test")])
}

#[test]
fn denied_names_get_nxdomain_with_the_query_echoed_and_allowed_ones_are_forwarded() {
    let p = allow_one();
    assert_eq!(decide(&query(7, &["allowed.test."]), &p), Verdict::Forward);
    assert_eq!(decide(&query(7, &["X.Sub.Test."]), &p), Verdict::Forward);
    for denied in [&["denied.test."][..], &["allowed.test.", "sub.test."]] {
        let Verdict::Answer(a) = decide(&query(0x1234, denied), &p) else {
            panic!("{denied:?} must be answered at once");
        };
        let m = parse(&a);
        assert_eq!(m.id(), 0x1234);
        assert_eq!(m.message_type(), MessageType::Response);
        assert_eq!(m.response_code(), ResponseCode::NXDomain);
        assert!(m.recursion_desired());
        assert_eq!(m.queries().len(), denied.len());
        assert!(m.answers().is_empty());
    }
    // default allow with a denied wildcard
    let open = policy(EgressAction::Allow, &[(EgressAction::Deny, "*.evil.test")]);
    assert_eq!(decide(&query(1, &["evil.test."]), &open), Verdict::Forward);
    assert!(matches!(
        decide(&query(1, &["a.evil.test."]), &open),
        Verdict::Answer(_)
    ));
}

#[test]
fn messages_that_are_not_plain_queries_are_dropped_or_refused() {
    let p = allow_one();
    assert_eq!(decide(b"\x01", &p), Verdict::Drop);
    let mut resp = parse(&query(3, &["allowed.test."]));
    resp.set_message_type(MessageType::Response);
    assert_eq!(decide(&resp.to_vec().expect("encode"), &p), Verdict::Drop);
    let Verdict::Answer(a) = decide(&query(3, &[]), &p) else {
        panic!("no question");
    };
    assert_eq!(parse(&a).response_code(), ResponseCode::FormErr);
    let mut upd = parse(&query(4, &["allowed.test."]));
    upd.set_op_code(OpCode::Update);
    let Verdict::Answer(a) = decide(&upd.to_vec().expect("encode"), &p) else {
        panic!("an update");
    };
    assert_eq!(parse(&a).response_code(), ResponseCode::NotImp);
}

fn answer(q: &[u8], records: &[(IpAddr, u32)]) -> Vec<u8> {
    let q = parse(q);
    let mut m = Message::error_msg(q.id(), q.op_code(), ResponseCode::NoError);
    let name = q.queries()[0].name().clone();
    m.add_query(q.queries()[0].clone());
    m.add_answer(Record::from_rdata(
        name.clone(),
        300,
        RData::CNAME(rdata::CNAME(Name::from_ascii("cdn.other.").expect("name"))),
    ));
    for (ip, ttl) in records {
        let data = match ip {
            IpAddr::V4(a) => RData::A(rdata::A(*a)),
            IpAddr::V6(a) => RData::AAAA(rdata::AAAA(*a)),
        };
        m.add_answer(Record::from_rdata(name.clone(), *ttl, data));
    }
    m.to_vec().expect("encode")
}

#[test]
fn answers_give_their_addresses_and_the_set_script_refreshes_clamped_timeouts() {
    let v4 = IpAddr::V4(Ipv4Addr::new(10, 9, 8, 7));
    let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7));
    let a = answer(&query(9, &["allowed.test."]), &[(v4, 5), (v6, 86400)]);
    assert_eq!(answer_addresses(&a), vec![(v4, 5), (v6, 86400)]);
    assert!(answer_addresses(b"junk").is_empty());
    let clamp = TtlClamp::default();
    assert_eq!(clamp.apply(0), 60);
    assert_eq!(clamp.apply(300), 300);
    assert_eq!(clamp.apply(u32::MAX), 3600);
    let s = set_script(&answer_addresses(&a), clamp);
    assert_eq!(
        s.lines().collect::<Vec<_>>(),
        [
            "add element inet sandpool_egress dns_allow4 { 10.9.8.7 }",
            "delete element inet sandpool_egress dns_allow4 { 10.9.8.7 }",
            "add element inet sandpool_egress dns_allow4 { 10.9.8.7 timeout 60s }",
            "add element inet sandpool_egress dns_allow6 { fd00::7 }",
            "delete element inet sandpool_egress dns_allow6 { fd00::7 }",
            "add element inet sandpool_egress dns_allow6 { fd00::7 timeout 3600s }",
        ]
    );
    assert_eq!(set_script(&[], clamp), "");
}

#[test]
fn private_addresses_of_a_name_under_a_ported_rule_do_not_join_the_sets() {
    let public = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 7));
    let private = IpAddr::V4(Ipv4Addr::new(10, 9, 8, 7));
    let loopback6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let addrs = vec![(public, 60), (private, 60), (loopback6, 60)];
    let mut e2b = allow_one();
    for r in &mut e2b.rules {
        r.port = 443;
    }
    let q = parse(&query(3, &["allowed.test."]));
    assert_eq!(admitted(&q, addrs.clone(), &e2b), vec![(public, 60)]);
    // OpenSandbox's unported rules admit what the resolver said, as upstream
    assert_eq!(admitted(&q, addrs.clone(), &allow_one()), addrs);
}

#[test]
fn the_upstream_resolver_is_the_first_nameserver_of_resolv_conf() {
    let text = "# generated\nsearch lan\nnameserver 127.0.0.53\nnameserver 1.1.1.1\n";
    assert_eq!(
        resolv_conf_upstream(text),
        Some(SocketAddr::from(([127, 0, 0, 53], 53)))
    );
    assert_eq!(
        resolv_conf_upstream("nameserver fe80::1%eth0\n").map(|a| a.is_ipv6()),
        Some(true)
    );
    assert_eq!(resolv_conf_upstream("search lan\n"), None);
}

/// Records the scripts it is given.
#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl SetWriter for Recorder {
    fn add(&self, script: &str) -> crate::error::Result<()> {
        self.0.lock().push(script.to_owned());
        Ok(())
    }
}

/// A resolver on loopback that answers every A query with `addr` (TTL 5)
/// and counts the queries it got.
async fn fake_upstream(addr: Ipv4Addr) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let at = sock.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let q = &buf[..n];
            log.lock()
                .push(parse(q).queries()[0].name().to_ascii().to_lowercase());
            let a = answer(q, &[(IpAddr::V4(addr), 5)]);
            let _ = sock.send_to(&a, from).await;
        }
    });
    (at, seen)
}

async fn ask(proxy: SocketAddr, from: Ipv4Addr, q: &[u8]) -> Message {
    let c = tokio::net::UdpSocket::bind((from, 0)).await.expect("bind");
    c.send_to(q, proxy).await.expect("send");
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), c.recv_from(&mut buf))
        .await
        .expect("the proxy answers")
        .expect("recv");
    parse(&buf[..n])
}

#[tokio::test]
async fn the_proxy_resolves_allowed_names_through_upstream_and_fills_the_sets_first() {
    let target = Ipv4Addr::new(10, 9, 8, 7);
    let (upstream, seen) = fake_upstream(target).await;
    let proxy = DnsProxy::start(
        "127.0.0.1:0".parse().expect("addr"),
        upstream,
        TtlClamp::default(),
    )
    .await
    .expect("start");
    let sandbox = Ipv4Addr::new(127, 0, 0, 1);
    let stranger = Ipv4Addr::new(127, 0, 0, 2);
    let sets = Arc::new(Recorder::default());
    proxy.set_client("sb1", IpAddr::V4(sandbox), allow_one(), sets.clone());

    let m = ask(proxy.local_addr(), sandbox, &query(11, &["Allowed.Test."])).await;
    assert_eq!(m.id(), 11);
    assert_eq!(m.response_code(), ResponseCode::NoError);
    assert_eq!(
        answer_addresses(&m.to_vec().expect("encode")),
        [(IpAddr::V4(target), 5)]
    );
    assert_eq!(
        sets.0.lock().as_slice(),
        [set_script(&[(IpAddr::V4(target), 5)], TtlClamp::default())]
    );

    let m = ask(proxy.local_addr(), sandbox, &query(12, &["denied.test."])).await;
    assert_eq!(m.response_code(), ResponseCode::NXDomain);
    assert!(m.answers().is_empty());
    // the denied name never left the node
    assert_eq!(seen.lock().as_slice(), ["allowed.test."]);
    assert_eq!(sets.0.lock().len(), 1);

    // a source that is no registered sandbox is refused
    let m = ask(proxy.local_addr(), stranger, &query(13, &["allowed.test."])).await;
    assert_eq!(m.response_code(), ResponseCode::Refused);
    proxy.remove_client("sb1");
    let m = ask(proxy.local_addr(), sandbox, &query(14, &["allowed.test."])).await;
    assert_eq!(m.response_code(), ResponseCode::Refused);
    assert_eq!(seen.lock().len(), 1);
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_gives_servfail() {
    // bound and silent
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let proxy = DnsProxy::start(
        "127.0.0.1:0".parse().expect("addr"),
        silent.local_addr().expect("addr"),
        TtlClamp::default(),
    )
    .await
    .expect("start");
    let me = Ipv4Addr::LOCALHOST;
    proxy.set_client(
        "sb2",
        IpAddr::V4(me),
        allow_one(),
        Arc::new(Recorder::default()),
    );
    let m = ask(proxy.local_addr(), me, &query(21, &["allowed.test."])).await;
    assert_eq!(m.response_code(), ResponseCode::ServFail);
}
