//! Image references as docker normalises them, so an image imported as
//! `docker.io/library/app:2` is found as `app:2`.

/// `name` in its fully qualified form: a registry domain (`docker.io` when
/// the first part names none), `library/` for docker.io's official images,
/// and a tag (`latest` when none).
///
/// ```text
/// app                  -> docker.io/library/app:latest
/// library/app:2        -> docker.io/library/app:2
/// docker.io/app:2      -> docker.io/library/app:2
/// user/app:2           -> docker.io/user/app:2
/// ghcr.io/org/app:2    -> ghcr.io/org/app:2
/// localhost:5000/app   -> localhost:5000/app:latest
/// ```
pub(crate) fn canonical(name: &str) -> String {
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (name, "latest"),
    };
    let (domain, path) = match repo.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first, rest.to_owned())
        }
        _ => ("docker.io", repo.to_owned()),
    };
    let domain = match domain {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        d => d,
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    format!("{domain}/{path}:{tag}")
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn references_normalise_as_docker_does() {
        for (short, full) in [
            ("app", "docker.io/library/app:latest"),
            ("app:2", "docker.io/library/app:2"),
            ("library/app:2", "docker.io/library/app:2"),
            ("docker.io/app:2", "docker.io/library/app:2"),
            ("docker.io/library/app:2", "docker.io/library/app:2"),
            ("index.docker.io/library/app:2", "docker.io/library/app:2"),
            ("user/app:2", "docker.io/user/app:2"),
            ("ghcr.io/org/app:2", "ghcr.io/org/app:2"),
            ("ghcr.io/app", "ghcr.io/app:latest"),
            ("localhost:5000/app", "localhost:5000/app:latest"),
            ("localhost/app:1", "localhost/app:1"),
        ] {
            assert_eq!(canonical(short), full, "{short}");
        }
        assert_ne!(canonical("app:2"), canonical("user/app:2"));
        assert_ne!(canonical("app:2"), canonical("app:3"));
    }
}
