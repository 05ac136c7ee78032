//! Link addresses, audiences and resource URIs.

/// What a link address names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// `$cbs`
    Cbs,
    /// `$management`
    Management,
    /// `<hub>` or `<hub>/Partitions/<id>`
    Hub {
        hub: String,
        partition: Option<String>,
    },
    /// `<hub>/ConsumerGroups/<cg>/Partitions/<id>`
    Consumer {
        hub: String,
        consumer_group: String,
        partition: String,
    },
}

/// A parsed link address: optional host (lower-case, no port) and the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkAddress {
    pub(crate) host: Option<String>,
    pub(crate) node: Node,
}

/// Lower-case host without port (`"ns.example.net:5671"` → `"ns.example.net"`).
pub(crate) fn host_without_port(host: &str) -> String {
    let h = host.trim();
    let h = if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((inner, _)) => inner,
            None => rest,
        }
    } else {
        match h.rsplit_once(':') {
            Some((name, port))
                if port.chars().all(|c| c.is_ascii_digit()) && !name.contains(':') =>
            {
                name
            }
            _ => h,
        }
    };
    h.to_ascii_lowercase()
}

/// Split `scheme://host[:port]/path` into (Some(host), path) or (None, path).
fn split_uri(s: &str) -> (Option<&str>, &str) {
    match s.split_once("://") {
        Some((_, rest)) => match rest.split_once('/') {
            Some((host, path)) => (Some(host), path),
            None => (Some(rest), ""),
        },
        None => (None, s.trim_start_matches('/')),
    }
}

/// Parse a link source/target address.
pub(crate) fn parse_link_address(address: &str) -> Option<LinkAddress> {
    let (host, path) = split_uri(address.trim());
    let host = host.map(host_without_port).filter(|h| !h.is_empty());
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let node = match segs.as_slice() {
        [n] if n.eq_ignore_ascii_case("$cbs") => Node::Cbs,
        [n] if n.eq_ignore_ascii_case("$management") => Node::Management,
        [hub] => Node::Hub {
            hub: (*hub).to_string(),
            partition: None,
        },
        [hub, p, id] if p.eq_ignore_ascii_case("partitions") => Node::Hub {
            hub: (*hub).to_string(),
            partition: Some((*id).to_string()),
        },
        [hub, c, cg, p, id]
            if c.eq_ignore_ascii_case("consumergroups") && p.eq_ignore_ascii_case("partitions") =>
        {
            Node::Consumer {
                hub: (*hub).to_string(),
                consumer_group: (*cg).to_string(),
                partition: (*id).to_string(),
            }
        }
        _ => return None,
    };
    Some(LinkAddress { host, node })
}

/// Normalise a resource URI for coverage checks: no scheme, lower-case, no
/// port, no trailing slash (`sb://NS:5671/Hub/` → `ns/hub`).
pub(crate) fn normalize_resource(uri: &str) -> String {
    let decoded = percent_decode(uri.trim());
    let (host, path) = split_uri(&decoded);
    let mut out = match host {
        Some(h) => host_without_port(h),
        None => String::new(),
    };
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(&seg.to_ascii_lowercase());
    }
    out
}

/// Whether a grant for `granted` (normalised) covers `wanted` (normalised).
pub(crate) fn covers(granted: &str, wanted: &str) -> bool {
    wanted == granted
        || (wanted.len() > granted.len()
            && wanted.starts_with(granted)
            && wanted.as_bytes()[granted.len()] == b'/')
}

/// The host of an audience / resource URI, if it has one.
pub(crate) fn uri_host(uri: &str) -> Option<String> {
    let (host, _) = split_uri(uri.trim());
    host.map(host_without_port).filter(|h| !h.is_empty())
}

fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let a = parse_link_address("amqps://NS.example.net:5671/hub1/Partitions/3").unwrap();
        assert_eq!(a.host.as_deref(), Some("ns.example.net"));
        assert_eq!(
            a.node,
            Node::Hub {
                hub: "hub1".into(),
                partition: Some("3".into())
            }
        );
        let a =
            parse_link_address("amqps://127.0.0.1:5673/hub1/ConsumerGroups/$Default/Partitions/0")
                .unwrap();
        assert_eq!(a.host.as_deref(), Some("127.0.0.1"));
        assert!(matches!(a.node, Node::Consumer { .. }));
        assert_eq!(parse_link_address("$cbs").unwrap().node, Node::Cbs);
        assert_eq!(
            parse_link_address("$management").unwrap().node,
            Node::Management
        );
        assert!(parse_link_address("amqps://h/a/b").is_none());
    }

    #[test]
    fn resources() {
        assert_eq!(normalize_resource("sb://NS:5671/Hub/"), "ns/hub");
        assert_eq!(normalize_resource("sb%3A%2F%2Fns%2Fhub"), "ns/hub");
        assert!(covers("ns/hub", "ns/hub/consumergroups/x/partitions/0"));
        assert!(covers("ns", "ns/hub"));
        assert!(!covers("ns/hub", "ns/hub2"));
        assert_eq!(host_without_port("[::1]:5672"), "::1");
        assert_eq!(host_without_port("localhost"), "localhost");
    }
}
