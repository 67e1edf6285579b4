//! The rate-limit store's connection: one Redis node (a connection manager that reconnects)
//! or a Redis Cluster (the `redis` crate's async cluster client, which follows MOVED and
//! ASK redirections and reloads the slot map when the topology changes). Valkey speaks
//! the same protocol, single node or cluster.
//!
//! A cluster runs a script only when all of its keys live in one slot: [`by_slot`] groups
//! a request's keys so that each group goes to Redis as one script (see
//! `RedisLimiter::check_exact`).

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_routing::Slot;
use redis::{Cmd, Pipeline, RedisFuture, Value};
use smallvec::SmallVec;
use std::time::Duration;

/// The schemes of a cluster's seed nodes: `redis+cluster://h1:p1,h2:p2` (TLS:
/// `rediss+cluster://…`), every node with the URL's user, password, path and query.
pub const CLUSTER_SCHEMES: [(&str, &str); 2] = [("redis+cluster://", "redis://"), ("rediss+cluster://", "rediss://")];

/// Where the limits are counted: one Redis node, or a cluster. Made once per process, so
/// its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum StoreClient {
    Node(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// A connection to either; cloning shares it.
#[derive(Clone)]
pub enum Connection {
    Node(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Each call's bounds on the connection (the breaker's timeout bounds it again, tighter).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

impl StoreClient {
    /// The client of `url`: a cluster for `redis+cluster://` and `rediss+cluster://`, else
    /// one node. `certs`: TLS with a CA or a client certificate of its own.
    pub fn open(url: &str, certs: Option<redis::TlsCertificates>) -> redis::RedisResult<Self> {
        if let Some(nodes) = cluster_nodes(url) {
            let mut builder = redis::cluster::ClusterClient::builder(nodes?)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                // Redirections (MOVED, ASK, TRYAGAIN during a migration) are retries too;
                // a few, quickly: the breaker's timeout bounds the call anyway.
                .retries(4)
                .min_retry_wait(2)
                .max_retry_wait(100);
            if let Some(certs) = certs {
                builder = builder.certs(certs);
            }
            return builder.build().map(StoreClient::Cluster);
        }
        Ok(StoreClient::Node(match certs {
            Some(certs) => redis::Client::build_with_tls(url, certs)?,
            None => redis::Client::open(url)?,
        }))
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, StoreClient::Cluster(_))
    }

    /// A connection (a cluster's: one to each node, made as its slot map says).
    pub async fn connect(&self) -> redis::RedisResult<Connection> {
        match self {
            StoreClient::Node(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1);
                client.get_connection_manager_with_config(config).await.map(Connection::Node)
            }
            StoreClient::Cluster(client) => client.get_async_connection().await.map(Connection::Cluster),
        }
    }

    /// One plain connection, for start-up's TLS check: whether a handshake fails.
    pub(super) async fn try_connect(&self) -> redis::RedisResult<()> {
        match self {
            StoreClient::Node(client) => client.get_multiplexed_async_connection().await.map(drop),
            StoreClient::Cluster(client) => client.get_async_connection().await.map(drop),
        }
    }
}

/// The seed nodes' URLs of a cluster URL; `None` for a single node's URL.
pub fn cluster_nodes(url: &str) -> Option<redis::RedisResult<Vec<String>>> {
    let (scheme, rest) =
        CLUSTER_SCHEMES.iter().find_map(|(cluster, node)| Some((*node, url.strip_prefix(cluster)?)))?;
    // user:password@ ends at the last '@' before the path, query or fragment (an '@' in
    // the query is the query's).
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let authority_end = authority.rfind('@').map_or(0, |at| at + 1);
    let tail_at = rest[authority_end..].find(['/', '?']).map_or(rest.len(), |i| authority_end + i);
    let (userinfo, hosts, tail) = (&rest[..authority_end], &rest[authority_end..tail_at], &rest[tail_at..]);
    let nodes: Vec<String> =
        hosts.split(',').filter(|h| !h.is_empty()).map(|host| format!("{scheme}{userinfo}{host}{tail}")).collect();
    if nodes.is_empty() {
        let none = (redis::ErrorKind::InvalidClientConfig, "a cluster URL names no seed node (host:port,host:port,…)");
        return Some(Err(none.into()));
    }
    Some(Ok(nodes))
}

/// The positions of `keys` grouped by the cluster slot each key hashes to (by its `{…}`
/// hash tag when it has one), in order of first appearance; one group on a single node,
/// where any keys go to one script.
pub(super) fn by_slot<K: AsRef<[u8]>>(keys: &[K], cluster: bool) -> SmallVec<[SmallVec<[usize; 4]>; 2]> {
    if !cluster {
        return smallvec::smallvec![(0..keys.len()).collect()];
    }
    let mut groups: SmallVec<[(Slot, SmallVec<[usize; 4]>); 2]> = SmallVec::new();
    for (i, key) in keys.iter().enumerate() {
        let slot = Slot::for_key(key.as_ref());
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, group)) => group.push(i),
            None => groups.push((slot, smallvec::smallvec![i])),
        }
    }
    groups.into_iter().map(|(_, group)| group).collect()
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Node(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Node(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{by_slot, cluster_nodes};

    #[test]
    fn a_cluster_url_names_its_seed_nodes_each_with_the_credentials() {
        let nodes = cluster_nodes("rediss+cluster://u:p@w,x@h1:7001,h2:7002/0?protocol=resp3").unwrap().unwrap();
        assert_eq!(nodes, ["rediss://u:p@w,x@h1:7001/0?protocol=resp3", "rediss://u:p@w,x@h2:7002/0?protocol=resp3"]);
        assert_eq!(cluster_nodes("redis+cluster://h1:1").unwrap().unwrap(), ["redis://h1:1"]);
        assert!(cluster_nodes("redis+cluster://").unwrap().is_err());
        assert!(cluster_nodes("redis://h1:1").is_none());
        // An '@' in the query is not the credentials' end.
        let nodes = cluster_nodes("redis+cluster://h1:1,h2:2/?client=a@b").unwrap().unwrap();
        assert_eq!(nodes, ["redis://h1:1/?client=a@b", "redis://h2:2/?client=a@b"]);
    }

    #[test]
    fn keys_group_by_slot_and_hash_tags_share_one() {
        // "kg:a" and "kg:b" hash to different slots; a tag puts a key in the tag's slot.
        let keys = ["kg:a", "kg:b", "x{kg:a}", "kg:a"];
        let groups = by_slot(&keys, true);
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert_eq!((groups[0].as_slice(), groups[1].as_slice()), (&[0, 2, 3][..], &[1][..]));
        assert_eq!(
            by_slot(&keys, false).as_slice(),
            [smallvec::smallvec![0, 1, 2, 3]] as [smallvec::SmallVec<[usize; 4]>; 1]
        );
    }
}
