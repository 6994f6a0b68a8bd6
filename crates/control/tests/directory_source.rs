//! The config directory: reads, re-reads on change, keeps the last good version of
//! an object whose new version is refused.

use std::time::Duration;

use oxmesh_config::Resource;
use oxmesh_control::source::directory::DirectorySource;
use oxmesh_testkit::TempDir;

fn dr(subsets: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: reviews}}\nspec: {{host: reviews, subsets: [{subsets}]}}\n"
    )
}

fn subsets(snapshot: &oxmesh_control::source::Snapshot) -> Vec<String> {
    snapshot
        .objects
        .iter()
        .find_map(|o| match &o.resource {
            Resource::DestinationRule(dr) => {
                Some(dr.subsets.iter().map(|s| s.name.clone()).collect())
            }
            _ => None,
        })
        .unwrap_or_default()
}

#[test]
fn reads_changes_and_keeps_the_last_good_version() {
    let dir = TempDir::new("scan");
    dir.write("dr.yaml", &dr("{name: v1}"));
    let mut source = DirectorySource::new(dir.0.clone());
    let first = source.scan().expect("first snapshot");
    assert_eq!(subsets(&first), vec!["v1"]);
    assert!(source.scan().is_none(), "nothing changed");

    dir.write("dr.yaml", &dr("{name: v1}, {name: v2}"));
    assert_eq!(subsets(&source.scan().expect("changed")), vec!["v1", "v2"]);

    // A refused version: the last good one keeps serving, and the refusal is reported.
    dir.write("dr.yaml", &dr("{name: v_3}"));
    let refused = source.scan().expect("changed");
    assert_eq!(subsets(&refused), vec!["v1", "v2"]);
    assert!(
        refused
            .diagnostics
            .iter()
            .any(|d| d.is_error() && d.to_string().contains("subset name is invalid: v_3"))
    );

    // Even a file too broken to parse keeps its objects.
    dir.write("dr.yaml", "{ this is not yaml");
    assert_eq!(subsets(&source.scan().expect("changed")), vec!["v1", "v2"]);

    std::fs::remove_file(dir.0.join("dr.yaml")).expect("remove");
    assert!(subsets(&source.scan().expect("removed")).is_empty());
}

#[tokio::test]
async fn a_change_is_published() {
    let dir = TempDir::new("watch");
    dir.write("dr.yaml", &dr("{name: v1}"));
    let (mut snapshots, watcher) = DirectorySource::new(dir.0.clone()).watch();
    assert_eq!(subsets(&snapshots.borrow()), vec!["v1"]);
    dir.write("dr.yaml", &dr("{name: v2}"));
    tokio::time::timeout(Duration::from_secs(10), snapshots.changed())
        .await
        .expect("published")
        .expect("open");
    assert_eq!(subsets(&snapshots.borrow()), vec!["v2"]);
    // Nobody watching: the watcher's thread ends by itself.
    drop(snapshots);
    watcher.join().expect("the watcher thread ends cleanly");
}
