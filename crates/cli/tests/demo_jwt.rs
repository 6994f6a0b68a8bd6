//! `oxmesh demo jwt`: the token it prints verifies against the key set it
//! prints, as the proxy verifies tokens, and carries the claims asked for.

use std::process::Command;

use oxmesh_proxy::authn::jwks::KeySet;
use oxmesh_proxy::authn::token::Token;

const BIN: &str = env!("CARGO_BIN_EXE_oxmesh");

fn demo(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["demo", "jwt"])
        .args(args)
        .output()
        .expect("oxmesh demo jwt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn the_printed_token_verifies_against_the_printed_keys() {
    let jwks = KeySet::parse(&demo(&["--jwks"])).expect("a key set");
    let raw = demo(&["--sub", "alice", "--claims", r#"{"groups":["group1"]}"#]);
    let token = Token::parse(&raw).expect("a token");
    let verified = jwks
        .candidates(token.kid.as_deref(), token.alg)
        .any(|key| key.verify(token.alg, token.signed.as_bytes(), &token.signature));
    assert!(verified, "signed by the demo key");
    assert_eq!(token.issuer(), "testing@secure.istio.io");
    assert_eq!(token.payload["sub"], "alice");
    assert_eq!(token.payload["groups"][0], "group1");
    let lifetime = token.date("exp").unwrap_or(0) - token.date("iat").unwrap_or(0);
    assert_eq!(lifetime, 3600, "an hour by default");

    let refused = Command::new(BIN)
        .args(["demo", "jwt", "--claims", "[1]"])
        .output()
        .expect("oxmesh demo jwt");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--claims"));
}
