//! The minimal /etc a host-view sandbox gets instead of the host's.

/// `(file name, contents, mode)` for each generated file in /etc.
pub(crate) fn files(
    hostname: &str,
    uid: u32,
    gid: u32,
    resolv_conf: Option<&[u8]>,
) -> Vec<(&'static str, Vec<u8>, u32)> {
    let mut passwd = String::from(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    );
    if uid != 0 && uid != 65534 {
        passwd.push_str(&format!("sandbox:x:{uid}:{gid}:sandbox:/tmp:/bin/sh\n"));
    }
    let mut group = String::from("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n");
    if ![0, 5, 65534].contains(&gid) {
        group.push_str(&format!("sandbox:x:{gid}:\n"));
    }
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    );
    let mut out = vec![
        ("passwd", passwd.into_bytes(), 0o644),
        ("group", group.into_bytes(), 0o644),
        ("hosts", hosts.into_bytes(), 0o644),
        ("hostname", format!("{hostname}\n").into_bytes(), 0o644),
        (
            "nsswitch.conf",
            b"passwd: files\ngroup: files\nhosts: files dns\n".to_vec(),
            0o644,
        ),
    ];
    if let Some(resolv) = resolv_conf {
        out.push(("resolv.conf", resolv.to_vec(), 0o644));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_etc_names_the_sandbox_user_and_host_and_no_secrets() {
        let files = files("box1", 1000, 1000, None);
        let get = |n: &str| {
            String::from_utf8(files.iter().find(|f| f.0 == n).unwrap().1.clone()).unwrap()
        };
        assert!(get("passwd").contains("sandbox:x:1000:1000"));
        assert!(get("group").contains("sandbox:x:1000:"));
        assert!(get("hosts").contains("box1"));
        assert!(files
            .iter()
            .all(|f| f.0 != "shadow" && f.0 != "resolv.conf"));
    }
}
