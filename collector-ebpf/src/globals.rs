//! Load-time constants (names in `collector_common::globals`). Zero means "unknown": the
//! code that needs an unknown offset skips its read rather than reading garbage.

use aya_ebpf::Global;

macro_rules! globals {
    ($($name:ident),+ $(,)?) => {
        $(
            #[unsafe(no_mangle)]
            pub static $name: Global<u32> = Global::new(0);
        )+
    };
}

globals!(
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
    TASK_LEADER_OFF,
    TASK_COMM_OFF,
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
);
