//! The CA as proxies reach it: real TLS on loopback, Istio's gRPC API, bearer tokens.

use std::time::Duration;

use oxmesh_control::control_plane::{ControlPlane, Options};
use oxmesh_control::mesh_config::MeshConfig;
use oxmesh_identity::ca::Lifetimes;
use oxmesh_identity::certificate::CertificateInfo;
use oxmesh_identity::credentials::Credentials;
use oxmesh_identity::csr;
use oxmesh_identity::manager::{CaClient, CaClientError, CertificateManager, Rotation};
use oxmesh_identity::token::{CA_AUDIENCE, TokenAuthority};
use oxmesh_identity::{SpiffeId, TrustDomain};
use oxmesh_testkit::TempDir;
use oxmesh_testkit::api_server::{self, ApiServer};
use oxmesh_xds::ca_client::{GrpcCaClient, Token};

const CONTROL_PLANE_NAME: &str = "istiod.istio-system.svc";

fn options(dir: &TempDir, port: u16) -> Options {
    Options {
        state_dir: dir.0.clone(),
        ca_dir: None,
        trust_domain: TrustDomain::cluster_local(),
        lifetimes: Lifetimes::default(),
        namespace: "istio-system".to_owned(),
        secure_addr: format!("127.0.0.1:{port}").parse().expect("addr"),
        xds_addr: "127.0.0.1:0".parse().expect("addr"),
        monitoring_addr: "127.0.0.1:0".parse().expect("addr"),
        webhook_addr: "127.0.0.1:0".parse().expect("addr"),
        injection: oxmesh_control::inject::Settings::default(),
        revision: "default".to_owned(),
        kubernetes: None,
        config_dir: None,
        mesh: MeshConfig::default(),
        jwks: Default::default(),
        limits: Default::default(),
        dashboard_prometheus: None,
        trusted_node_accounts: oxmesh_control::node_authorizer::DEFAULT_TRUSTED.to_owned(),
    }
}

fn tokens(dir: &TempDir) -> TokenAuthority {
    TokenAuthority::load_or_create(&dir.0, TrustDomain::cluster_local()).expect("token key")
}

fn client(cp: &ControlPlane, token: Token) -> GrpcCaClient {
    GrpcCaClient::new(
        &cp.secure_addr.to_string(),
        CONTROL_PLANE_NAME,
        &cp.authority.roots(),
        token,
    )
    .expect("client")
}

fn id(s: &str) -> SpiffeId {
    s.parse().expect("id")
}

#[tokio::test]
async fn a_proxy_gets_its_certificate_with_its_token() {
    let dir = TempDir::new("issue");
    let cp = ControlPlane::start(options(&dir, 0)).await.expect("start");
    let token = tokens(&dir)
        .mint("foo", "bar", CA_AUDIENCE, Duration::from_secs(600))
        .expect("token");
    let credentials = Credentials::new(id("spiffe://cluster.local/ns/foo/sa/bar"));
    let manager = CertificateManager::new(
        client(&cp, Token::Value(token)),
        credentials.clone(),
        Rotation::default(),
    );
    manager.refresh().await.expect("issued over gRPC");
    let svid = credentials.svid().expect("installed");
    let leaf = CertificateInfo::parse(svid.certified.cert[0].as_ref()).expect("leaf");
    assert_eq!(leaf.uri_sans, vec!["spiffe://cluster.local/ns/foo/sa/bar"]);
    assert_eq!(credentials.bundle().roots(), &cp.authority.roots());
    cp.shutdown().await;
}

async fn refusal(client: &GrpcCaClient, identity: &str, ttl: Duration) -> String {
    let (pem, _key) = csr::generate(&id(identity)).expect("csr");
    match client.create_certificate(pem, ttl).await {
        Err(CaClientError::Refused(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn refusals_say_why() {
    let dir = TempDir::new("refuse");
    let cp = ControlPlane::start(options(&dir, 0)).await.expect("start");
    let tokens = tokens(&dir);
    let day = Duration::from_secs(86_400);
    let foo_bar = client(
        &cp,
        Token::Value(tokens.mint("foo", "bar", CA_AUDIENCE, day).expect("token")),
    );

    let other = refusal(&foo_bar, "spiffe://cluster.local/ns/foo/sa/admin", day).await;
    assert!(
        other.contains("PermissionDenied")
            && other.contains("may only name spiffe://cluster.local/ns/foo/sa/bar"),
        "{other}"
    );

    let long = refusal(
        &foo_bar,
        "spiffe://cluster.local/ns/foo/sa/bar",
        Duration::from_secs(100 * 86_400),
    )
    .await;
    assert!(
        long.contains("InvalidArgument") && long.contains("max allowed TTL"),
        "{long}"
    );

    let anonymous = refusal(
        &client(&cp, Token::None),
        "spiffe://cluster.local/ns/foo/sa/bar",
        day,
    )
    .await;
    assert!(
        anonymous.contains("Unauthenticated") && anonymous.contains("no bearer token"),
        "{anonymous}"
    );

    let audience = client(
        &cp,
        Token::Value(tokens.mint("foo", "bar", "other", day).expect("token")),
    );
    let wrong = refusal(&audience, "spiffe://cluster.local/ns/foo/sa/bar", day).await;
    assert!(
        wrong.contains("Unauthenticated") && wrong.contains("audience"),
        "{wrong}"
    );

    let stranger_dir = TempDir::new("refuse-stranger");
    let forged = client(
        &cp,
        Token::Value(
            self::tokens(&stranger_dir)
                .mint("foo", "bar", CA_AUDIENCE, day)
                .expect("token"),
        ),
    );
    let bad = refusal(&forged, "spiffe://cluster.local/ns/foo/sa/bar", day).await;
    assert!(
        bad.contains("Unauthenticated") && bad.contains("signature"),
        "{bad}"
    );

    let garbage = foo_bar
        .create_certificate("not a csr".to_owned(), day)
        .await;
    assert!(
        matches!(&garbage, Err(CaClientError::Refused(r)) if r.contains("InvalidArgument")),
        "{garbage:?}"
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn a_client_verifies_the_control_planes_name_and_root() {
    let dir = TempDir::new("server-name");
    let cp = ControlPlane::start(options(&dir, 0)).await.expect("start");
    let token = Token::Value(
        tokens(&dir)
            .mint("foo", "bar", CA_AUDIENCE, Duration::from_secs(600))
            .expect("token"),
    );
    let wrong_name = GrpcCaClient::new(
        &cp.secure_addr.to_string(),
        "evil.example.com",
        &cp.authority.roots(),
        token.clone(),
    )
    .expect("client");
    let (pem, _) = csr::generate(&id("spiffe://cluster.local/ns/foo/sa/bar")).expect("csr");
    assert!(matches!(
        wrong_name
            .create_certificate(pem.clone(), Duration::from_secs(3600))
            .await,
        Err(CaClientError::Unavailable(_))
    ));
    let other_dir = TempDir::new("server-name-other");
    let stranger = oxmesh_identity::ca::Authority::self_signed(
        &other_dir.0,
        &TrustDomain::cluster_local(),
        Lifetimes::default(),
    )
    .expect("CA");
    let wrong_root = GrpcCaClient::new(
        &cp.secure_addr.to_string(),
        CONTROL_PLANE_NAME,
        stranger.roots(),
        token,
    )
    .expect("client");
    assert!(matches!(
        wrong_root
            .create_certificate(pem, Duration::from_secs(3600))
            .await,
        Err(CaClientError::Unavailable(_))
    ));
    cp.shutdown().await;
}

#[tokio::test]
async fn the_proxy_keeps_its_certificate_while_the_control_plane_restarts() {
    let dir = TempDir::new("restart");
    let cp = ControlPlane::start(options(&dir, 0)).await.expect("start");
    let port = cp.secure_addr.port();
    let token = Token::Value(
        tokens(&dir)
            .mint("foo", "bar", CA_AUDIENCE, Duration::from_secs(600))
            .expect("token"),
    );
    let credentials = Credentials::new(id("spiffe://cluster.local/ns/foo/sa/bar"));
    let manager =
        CertificateManager::new(client(&cp, token), credentials.clone(), Rotation::default());
    manager.refresh().await.expect("first certificate");
    let roots = cp.authority.roots();
    cp.shutdown().await;

    let away = manager.refresh().await;
    assert!(
        matches!(
            away,
            Err(oxmesh_identity::manager::ManagerError::Ca(
                CaClientError::Unavailable(_)
            ))
        ),
        "{away:?}"
    );
    assert!(credentials.is_ready(), "the old certificate keeps serving");

    let again = ControlPlane::start(options(&dir, port))
        .await
        .expect("restart on the same port");
    assert_eq!(
        again.authority.roots(),
        roots.as_slice(),
        "same root after a restart"
    );
    manager
        .refresh()
        .await
        .expect("renewed once the control plane is back");
    again.shutdown().await;
}

/// A root and an intermediate signed by it, written as a cacerts directory.
fn write_intermediate(
    root: &rcgen::Issuer<'static, rcgen::KeyPair>,
    root_der: &rustls::pki_types::CertificateDer<'static>,
    name: &str,
    dir: &std::path::Path,
) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let cert = params.signed_by(&key, root).expect("intermediate");
    oxmesh_identity::ca::CaFiles {
        cert: cert.der().clone(),
        key_pem: key.serialize_pem(),
        chain: vec![cert.der().clone()],
        roots: vec![root_der.clone()],
    }
    .write(dir)
    .expect("write cacerts");
}

async fn issuer_of(client: &GrpcCaClient) -> String {
    let (pem, _) = csr::generate(&id("spiffe://cluster.local/ns/foo/sa/bar")).expect("csr");
    let chain = client
        .create_certificate(pem, Duration::from_secs(3600))
        .await
        .expect("issued");
    let leaf = oxmesh_identity::certificate::pem_certificates(chain[0].as_bytes()).expect("leaf");
    CertificateInfo::parse(leaf[0].as_ref())
        .expect("parse")
        .issuer
}

#[tokio::test]
async fn a_replaced_plug_in_intermediate_is_picked_up_and_bad_files_are_not() {
    let state = TempDir::new("reload-state");
    let cacerts = TempDir::new("reload-cacerts");
    let root_key = rcgen::KeyPair::generate().expect("key");
    let mut root_params = rcgen::CertificateParams::default();
    root_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Operator Root");
    root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    root_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let root_der = root_params
        .self_signed(&root_key)
        .expect("root")
        .der()
        .clone();
    let root = rcgen::Issuer::new(root_params, root_key);
    write_intermediate(&root, &root_der, "Intermediate One", &cacerts.0);

    let mut opts = options(&state, 0);
    opts.ca_dir = Some(cacerts.0.clone());
    let cp = ControlPlane::start(opts).await.expect("start");
    let token = Token::Value(
        tokens(&state)
            .mint("foo", "bar", CA_AUDIENCE, Duration::from_secs(600))
            .expect("token"),
    );
    let client = client(&cp, token);
    assert_eq!(issuer_of(&client).await, "CN=Intermediate One");

    // Unusable files: the current CA keeps signing.
    std::fs::write(cacerts.0.join("ca-key.pem"), "not a key").expect("write");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(issuer_of(&client).await, "CN=Intermediate One");

    // A new intermediate under the same root: picked up without a restart.
    write_intermediate(&root, &root_der, "Intermediate Two", &cacerts.0);
    let mut issuer = String::new();
    for _ in 0..50 {
        issuer = issuer_of(&client).await;
        if issuer == "CN=Intermediate Two" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(issuer, "CN=Intermediate Two");
    cp.shutdown().await;
}

/// ADS over TLS to 15012, with `authorization` when given.
async fn ads_stream(
    cp: &ControlPlane,
    namespace: &str,
    account: &str,
    token: Option<&str>,
) -> Result<oxmesh_xds::ads::client::SotwClient, oxmesh_xds::ads::client::ClientError> {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
    let config =
        oxmesh_xds::tls_connector::control_plane_config(&cp.authority.roots()).expect("tls config");
    let name = rustls::pki_types::ServerName::try_from(CONTROL_PLANE_NAME).expect("name");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", cp.secure_addr))
        .expect("endpoint")
        .connect_with_connector(oxmesh_xds::tls_connector::connector(
            std::sync::Arc::new(config),
            name,
        ))
        .await
        .expect("TLS to 15012");
    let string = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    let node = Node {
        id: format!("sidecar~198.18.0.9~app-1.{namespace}~{namespace}.svc.cluster.local"),
        metadata: Some(Struct {
            fields: [
                ("NAMESPACE".to_owned(), string(namespace)),
                ("SERVICE_ACCOUNT".to_owned(), string(account)),
            ]
            .into_iter()
            .collect(),
        }),
        ..Default::default()
    };
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut client =
        oxmesh_xds::ads::client::SotwClient::over(channel, node, bearer.as_deref()).await?;
    client
        .subscribe(oxmesh_xds::ads::types::CLUSTER, &[])
        .await?;
    client.recv().await?;
    Ok(client)
}

/// 15012 serves config only to a proxy that proves who it is, and only its
/// own: the token's namespace and account must be the node's (istiod's rule).
#[tokio::test]
async fn xds_on_the_secure_port_needs_the_proxys_own_identity() {
    use oxmesh_xds::ads::client::ClientError;
    let dir = TempDir::new("xds-auth");
    let cp = ControlPlane::start(options(&dir, 0)).await.expect("start");
    let token = tokens(&dir)
        .mint("foo", "bar", CA_AUDIENCE, Duration::from_secs(600))
        .expect("token");
    let code = |result: Result<_, ClientError>| match result {
        Err(ClientError::Refused(status)) => status.code(),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => tonic::Code::Ok,
    };
    assert_eq!(
        code(ads_stream(&cp, "foo", "bar", Some(&token)).await),
        tonic::Code::Ok
    );
    assert_eq!(
        code(ads_stream(&cp, "foo", "bar", None).await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        code(ads_stream(&cp, "foo", "bar", Some("not-a-token")).await),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        code(ads_stream(&cp, "other", "bar", Some(&token)).await),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        code(ads_stream(&cp, "foo", "admin", Some(&token)).await),
        tonic::Code::PermissionDenied
    );
    cp.shutdown().await;
}

#[tokio::test]
async fn on_kubernetes_a_service_account_token_is_checked_with_a_token_review() {
    let dir = TempDir::new("token-review");
    // The API server vouches for `reviews-token` (default/reviews, for the CA)
    // and `api-token` (the same account, for another audience).
    let api = ApiServer::start(api_server::standard_types()).await;
    let account = "system:serviceaccount:default:reviews";
    api.review_token("reviews-token", account, &[CA_AUDIENCE]);
    api.review_token("api-token", account, &["https://kubernetes.default.svc"]);
    let kubernetes = oxmesh_control::kube_api::connect(Some(&api.kubeconfig(&dir.0)))
        .await
        .expect("kubeconfig")
        .expect("client");
    let cp = ControlPlane::start(Options {
        kubernetes: Some(kubernetes),
        ..options(&dir, 0)
    })
    .await
    .expect("start");

    // A pod's projected token, reviewed by the API server: its own identity.
    let credentials = Credentials::new(id("spiffe://cluster.local/ns/default/sa/reviews"));
    let manager = CertificateManager::new(
        client(&cp, Token::Value("reviews-token".into())),
        credentials.clone(),
        Rotation::default(),
    );
    manager
        .refresh()
        .await
        .expect("issued for the reviewed service account");
    let svid = credentials.svid().expect("installed");
    let leaf = CertificateInfo::parse(svid.certified.cert[0].as_ref()).expect("leaf");
    assert_eq!(
        leaf.uri_sans,
        vec!["spiffe://cluster.local/ns/default/sa/reviews"]
    );

    let day = Duration::from_secs(86_400);
    let reviews = client(&cp, Token::Value("reviews-token".into()));
    let other = refusal(&reviews, "spiffe://cluster.local/ns/default/sa/admin", day).await;
    assert!(other.contains("reviews"), "{other}");
    let wrong_audience = client(&cp, Token::Value("api-token".into()));
    let reason = refusal(
        &wrong_audience,
        "spiffe://cluster.local/ns/default/sa/reviews",
        day,
    )
    .await;
    assert!(reason.contains("istio-ca"), "{reason}");
    let unknown = client(&cp, Token::Value("stolen".into()));
    let reason = refusal(
        &unknown,
        "spiffe://cluster.local/ns/default/sa/reviews",
        day,
    )
    .await;
    assert!(reason.contains("invalid bearer token"), "{reason}");

    // Tokens the control plane minted itself still work beside them.
    let local = tokens(&dir)
        .mint("foo", "bar", CA_AUDIENCE, Duration::from_secs(600))
        .expect("token");
    let credentials = Credentials::new(id("spiffe://cluster.local/ns/foo/sa/bar"));
    CertificateManager::new(
        client(&cp, Token::Value(local)),
        credentials,
        Rotation::default(),
    )
    .refresh()
    .await
    .expect("a local token");
    cp.shutdown().await;
}

/// `default/app` runs on node-a, `default/other` on node-b.
const PODS_ON_NODES: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: app-1, namespace: default}
spec: {serviceAccountName: app, nodeName: node-a, containers: [{name: app, image: app}]}
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: other-1, namespace: default}
spec: {serviceAccountName: other, nodeName: node-b, containers: [{name: app, image: app}]}
status: {phase: Running, podIP: 10.0.0.2}
"#;

#[tokio::test]
async fn a_node_proxy_gets_certificates_for_the_pods_on_its_node_only() {
    let dir = TempDir::new("impersonate");
    let config = TempDir::new("impersonate-config");
    std::fs::write(config.path("pods.yaml"), PODS_ON_NODES).expect("write pods");
    let mut options = options(&dir, 0);
    options.config_dir = Some(config.0.clone());
    let cp = ControlPlane::start(options).await.expect("start");
    let tokens = tokens(&dir);
    let day = Duration::from_secs(86_400);
    let on_node = |ns: &str, sa: &str, node: Option<&str>| {
        let token = tokens
            .mint_on_node(ns, sa, CA_AUDIENCE, day, node)
            .expect("token");
        client(&cp, Token::Value(token))
    };
    let app = id("spiffe://cluster.local/ns/default/sa/app");
    let ztunnel_a = on_node("istio-system", "ztunnel", Some("node-a"));

    let (pem, _key) = csr::generate(&app).expect("csr");
    let chain = ztunnel_a
        .impersonating(app.clone())
        .create_certificate(pem, day)
        .await
        .expect("the pod on the node proxy's node gets its certificate");
    let leaf = oxmesh_identity::certificate::pem_certificates(chain[0].as_bytes()).expect("pem");
    let leaf = CertificateInfo::parse(leaf[0].as_ref()).expect("leaf");
    assert_eq!(
        leaf.uri_sans,
        vec![app.to_string()],
        "the pod's identity, not the caller's"
    );

    let elsewhere = id("spiffe://cluster.local/ns/default/sa/other");
    let refused = refusal(
        &ztunnel_a.impersonating(elsewhere.clone()),
        &elsewhere.to_string(),
        day,
    )
    .await;
    assert!(
        refused.contains("Unauthenticated")
            && refused.contains("request impersonation authentication failure")
            && refused.contains(
                "no running pod of spiffe://cluster.local/ns/default/sa/other is on node \"node-a\""
            ),
        "{refused}"
    );

    let pod = on_node("default", "app", Some("node-a"));
    let refused = refusal(
        &pod.impersonating(elsewhere.clone()),
        &elsewhere.to_string(),
        day,
    )
    .await;
    assert!(
        refused.contains("may not ask for other identities' certificates"),
        "only node proxies impersonate: {refused}"
    );

    let unbound = on_node("istio-system", "ztunnel", None);
    let refused = refusal(&unbound.impersonating(app.clone()), &app.to_string(), day).await;
    assert!(refused.contains("names no node"), "{refused}");
    cp.shutdown().await;
}
