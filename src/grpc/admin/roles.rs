//! What each admin RPC needs of its caller's role, and what one call costs of its token's
//! budget.

use crate::domain::AdminNeed;

/// What each admin RPC needs of its caller's role (docs/deployment.md: "Admin token roles"). An RPC
/// missing here needs `admin`.
pub const ADMIN_RPCS: [(&str, AdminNeed); 27] = [
    ("CreateApplication", AdminNeed::Admin),
    ("GetApplication", AdminNeed::Read),
    ("ListApplications", AdminNeed::Read),
    ("UpdateApplication", AdminNeed::Admin),
    ("DeleteApplication", AdminNeed::Admin),
    ("CreateApiKey", AdminNeed::KeysWrite),
    ("GetApiKey", AdminNeed::Read),
    ("ListApiKeys", AdminNeed::Read),
    ("UpdateApiKey", AdminNeed::KeysWrite),
    ("RevokeApiKey", AdminNeed::KeysWrite),
    ("RerollApiKey", AdminNeed::KeysWrite),
    ("DeleteApiKey", AdminNeed::KeysWrite),
    ("ImportApiKeys", AdminNeed::KeysWrite),
    ("UpdateOwner", AdminNeed::Admin),
    ("GetOwner", AdminNeed::Read),
    ("RotateApplicationKey", AdminNeed::Admin),
    ("CreateSession", AdminNeed::Admin),
    ("GetSession", AdminNeed::Read),
    ("RevokeSession", AdminNeed::Admin),
    ("ListSessions", AdminNeed::Read),
    ("DeleteAccount", AdminNeed::Admin),
    ("ListAuditEvents", AdminNeed::Read),
    ("CreateAdminToken", AdminNeed::Admin),
    ("ListAdminTokens", AdminNeed::Admin),
    ("RevokeAdminToken", AdminNeed::Admin),
    ("GetUsage", AdminNeed::Read),
    ("TopKeys", AdminNeed::Read),
];

/// What one call costs of its token's calls a second: a list reads up to a page of records
/// and a search scans up to 10,000 rows for it, so it counts as `LIST_UNITS` calls. At the
/// default 50 a second a token lists 5 pages a second, and one reader's scans take a few
/// percent of a core, not the machine (`keygate-bench neighbours`, admin-scans). A usage
/// read costs as much: it writes the replica's pending counts and reads up to 1,500 buckets.
pub(super) fn call_units(rpc: &str) -> u32 {
    if rpc.starts_with("List") || rpc == "GetUsage" || rpc == "TopKeys" {
        LIST_UNITS
    } else {
        1
    }
}

/// See [`call_units`].
const LIST_UNITS: u32 = 10;

/// The change feed's one RPC (`keygate.v1.Watch`), behind the same gate: it shows what
/// reads show, so it needs what they need.
pub const WATCH_RPC: (&str, AdminNeed) = ("Subscribe", AdminNeed::Read);

/// What `rpc` needs of its caller's role: its row's, or `admin`.
pub(super) fn need_of(rpc: &str) -> AdminNeed {
    if rpc == WATCH_RPC.0 {
        return WATCH_RPC.1;
    }
    ADMIN_RPCS.iter().find(|(name, _)| *name == rpc).map_or(AdminNeed::Admin, |(_, need)| *need)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::proto::FILE_DESCRIPTOR_SET;
    use prost::Message;

    #[test]
    fn every_admin_rpc_has_a_row_in_the_roles_table() {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let admin = set.file.iter().flat_map(|f| &f.service).find(|s| s.name() == "Admin").expect("the Admin service");
        let mut in_proto: Vec<&str> = admin.method.iter().map(|m| m.name()).collect();
        let mut in_table: Vec<&str> = ADMIN_RPCS.iter().map(|(name, _)| *name).collect();
        in_proto.sort_unstable();
        in_table.sort_unstable();
        assert_eq!(
            in_proto, in_table,
            "a new admin RPC needs a row (and a line in the roles table of docs/deployment.md)"
        );
        assert_eq!(need_of("NoSuchRpc"), AdminNeed::Admin, "unknown RPCs need admin");
    }
}
