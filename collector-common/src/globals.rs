//! Load-time constants injected by userspace with `EbpfLoader::override_global`.
//!
//! Rust eBPF has no CO-RE, so struct offsets come from the running kernel's BTF and classic
//! tracepoint record offsets from tracefs `format` files. aya freezes `.rodata`, so the
//! verifier sees these as constants and prunes branches that depend on them.
//! Each name below is a `#[unsafe(no_mangle)] static NAME: Global<u32>` in collector-ebpf;
//! userspace overrides every one with `must_exist = true`, so a missing symbol fails the load.

/// `sock.sk_cgrp_data.cgroup`
pub const SK_CGRP_OFF: &str = "SK_CGRP_OFF";
/// `cgroup.kn`
pub const CGRP_KN_OFF: &str = "CGRP_KN_OFF";
/// `kernfs_node.id`
pub const KN_ID_OFF: &str = "KN_ID_OFF";
/// `sock.sk_err`
pub const SK_ERR_OFF: &str = "SK_ERR_OFF";
/// `sock.sk_protocol` (a u16 since Linux 5.6)
pub const SK_PROTO_OFF: &str = "SK_PROTO_OFF";
/// `sock.__sk_common.skc_state` (u8; in `sock_common`, so readable in timewait and request
/// sockets too)
pub const SK_STATE_OFF: &str = "SK_STATE_OFF";
/// `tcp_sock.total_retrans` (u32)
pub const TCP_TOTAL_RETRANS_OFF: &str = "TCP_TOTAL_RETRANS_OFF";
/// `sk_buff.cb`
pub const SKB_CB_OFF: &str = "SKB_CB_OFF";
/// `tcp_skb_cb.tcp_gso_segs` (u16)
pub const CB_GSO_SEGS_OFF: &str = "CB_GSO_SEGS_OFF";
/// 1 when the `tcp_retransmit_skb` tracepoint has an `err` argument (≥ 6.14) — in that case it
/// also fires for failed retransmits, which must not be counted.
pub const RETRANS_HAS_ERR: &str = "RETRANS_HAS_ERR";

/// `task_struct.group_leader`: process names come from the thread-group leader, not from
/// whichever thread happened to send (Go and tokio name their threads).
pub const TASK_LEADER_OFF: &str = "TASK_LEADER_OFF";
/// `task_struct.comm`
pub const TASK_COMM_OFF: &str = "TASK_COMM_OFF";

/// Classic tracepoint record offsets, from tracefs.
pub const TP_SEND_SK: &str = "TP_SEND_SK";
pub const TP_SEND_PROTO: &str = "TP_SEND_PROTO";
pub const TP_SEND_RET: &str = "TP_SEND_RET";
pub const TP_RETRANS_SK: &str = "TP_RETRANS_SK";
pub const TP_RETRANS_SKB: &str = "TP_RETRANS_SKB";
pub const TP_RETRANS_ERR: &str = "TP_RETRANS_ERR";
pub const TP_SYNACK_SK: &str = "TP_SYNACK_SK";
pub const TP_STATE_SK: &str = "TP_STATE_SK";
pub const TP_STATE_OLD: &str = "TP_STATE_OLD";
pub const TP_STATE_NEW: &str = "TP_STATE_NEW";
pub const TP_STATE_PROTO: &str = "TP_STATE_PROTO";
pub const TP_RESET_SENT_SK: &str = "TP_RESET_SENT_SK";
pub const TP_RESET_RECV_SK: &str = "TP_RESET_RECV_SK";
pub const TP_DESTROY_SK: &str = "TP_DESTROY_SK";

/// Every global the object must define, in one list for the loader.
pub const ALL: [&str; 26] = [
    TASK_LEADER_OFF,
    TASK_COMM_OFF,
    SK_CGRP_OFF,
    CGRP_KN_OFF,
    KN_ID_OFF,
    SK_ERR_OFF,
    SK_PROTO_OFF,
    SK_STATE_OFF,
    TCP_TOTAL_RETRANS_OFF,
    SKB_CB_OFF,
    CB_GSO_SEGS_OFF,
    RETRANS_HAS_ERR,
    TP_SEND_SK,
    TP_SEND_PROTO,
    TP_SEND_RET,
    TP_RETRANS_SK,
    TP_RETRANS_SKB,
    TP_RETRANS_ERR,
    TP_SYNACK_SK,
    TP_STATE_SK,
    TP_STATE_OLD,
    TP_STATE_NEW,
    TP_STATE_PROTO,
    TP_RESET_SENT_SK,
    TP_RESET_RECV_SK,
    TP_DESTROY_SK,
];
