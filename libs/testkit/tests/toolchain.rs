//! The toolchain is honest: no package in `Cargo.lock` needs a newer rustc than the
//! workspace's `rust-version` (its MSRV) or than the Rust image `docker/Dockerfile` builds
//! with (`ARG RUST_VERSION`). Either lie fails a user at their first build (`cargo build
//! --locked` refuses a package whose `rust-version` is above the compiler's).

use std::process::Command;

/// A rustc version as `major.minor[.patch]`; a missing part counts as 0.
fn parse(version: &str) -> (u64, u64, u64) {
    let mut parts = version.trim().split('.').map(|p| {
        p.parse::<u64>()
            .unwrap_or_else(|_| panic!("not a rustc version: {version:?}"))
    });
    let major = parts.next().unwrap();
    let minor = parts.next().unwrap_or(0);
    let patch = parts.next().unwrap_or(0);
    (major, minor, patch)
}

fn dockerfile_rust_version(dockerfile: &str) -> String {
    dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ARG RUST_VERSION="))
        .expect("docker/Dockerfile has no `ARG RUST_VERSION=<version>` line")
        .trim()
        .to_owned()
}

/// A locked package: name, version, `rust-version` (if it declares one), workspace member.
struct Package {
    name: String,
    version: String,
    rust_version: Option<String>,
    member: bool,
}

/// Every package of `Cargo.lock`, from `cargo metadata --locked` (which fails if the lock
/// file is not up to date).
fn locked_packages() -> Vec<Package> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(testkit::repo_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata --locked failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = metadata["workspace_members"].as_array().unwrap();
    metadata["packages"]
        .as_array()
        .expect("cargo metadata lists packages")
        .iter()
        .map(|p| Package {
            name: p["name"].as_str().unwrap().to_owned(),
            version: p["version"].as_str().unwrap().to_owned(),
            rust_version: p["rust_version"].as_str().map(str::to_owned),
            member: members.contains(&p["id"]),
        })
        .collect()
}

/// The dependencies (workspace members aside: they say the MSRV, checked on its own) whose
/// `rust-version` is above `toolchain`, as `name version (needs x)`.
fn too_new(packages: &[Package], toolchain: &str) -> Vec<String> {
    let have = parse(toolchain);
    packages
        .iter()
        .filter(|p| !p.member)
        .filter_map(|p| {
            let needs = p.rust_version.as_deref()?;
            (parse(needs) > have).then(|| format!("{} {} (needs rustc {needs})", p.name, p.version))
        })
        .collect()
}

#[test]
fn no_locked_package_needs_a_newer_rustc_than_the_dockerfile_or_the_msrv() {
    let dockerfile =
        std::fs::read_to_string(testkit::repo_root().join("docker/Dockerfile")).unwrap();
    let image = dockerfile_rust_version(&dockerfile);
    let packages = locked_packages();
    assert!(
        packages.len() > 100,
        "cargo metadata listed {} packages",
        packages.len()
    );

    let above_image = too_new(&packages, &image);
    assert!(
        above_image.is_empty(),
        "docker/Dockerfile builds with Rust {image} (ARG RUST_VERSION), but Cargo.lock holds \
         packages that need a newer rustc; raise RUST_VERSION (and the workspace's rust-version) \
         or lock older versions:\n  {}",
        above_image.join("\n  ")
    );
    // The workspace's rust-version, as each member inherits it: the real minimum.
    for member in packages.iter().filter(|p| p.member) {
        let msrv = member.rust_version.as_deref().unwrap_or_else(|| {
            panic!(
                "{} declares no rust-version (rust-version.workspace = true)",
                member.name
            )
        });
        let above_msrv = too_new(&packages, msrv);
        assert!(
            above_msrv.is_empty(),
            "{} says rust-version {msrv}, but Cargo.lock holds packages that need a newer rustc; \
             raise the workspace's rust-version in Cargo.toml or lock older versions:\n  {}",
            member.name,
            above_msrv.join("\n  ")
        );
        // The image builds the workspace, so it has at least the workspace's MSRV.
        assert!(
            parse(&image) >= parse(msrv),
            "docker/Dockerfile builds with Rust {image}, below {}'s rust-version {msrv}",
            member.name
        );
    }
}

#[test]
fn versions_compare_as_numbers_with_missing_parts_as_zero() {
    assert!(parse("1.89") > parse("1.88.9"));
    assert!(parse("1.100") > parse("1.99"));
    assert_eq!(parse("1.89"), parse("1.89.0"));
    let package = |name: &str, needs: Option<&str>| Package {
        name: name.into(),
        version: "1.0.0".into(),
        rust_version: needs.map(Into::into),
        member: false,
    };
    let packages = [
        package("old", Some("1.70")),
        package("new", Some("1.89.0")),
        package("none", None),
        Package {
            member: true,
            ..package("ours", Some("1.99"))
        },
    ];
    assert_eq!(
        too_new(&packages, "1.88"),
        ["new 1.0.0 (needs rustc 1.89.0)"]
    );
    assert!(too_new(&packages, "1.89").is_empty());
}
