//! Which kernel functions the compiler split or cloned.
//!
//! GCC may split a function (`__tcp_retransmit_skb.part.0` on Debian's 6.1) or specialise it
//! (`.isra.N`, `.constprop.N`); callers then run the copy and never enter the symbol a kprobe
//! or fentry program attaches to. Measured on Debian 6.1: a kprobe on `__tcp_retransmit_skb`
//! saw 0 of 402 retransmitted segments. Such a rung is reported unavailable and the ladder falls
//! through, rather than attaching and silently missing most events. (`.cold` parts hold only
//! unlikely paths; the entry stays in the symbol, so they do not count.)

use std::collections::BTreeMap;

/// Base function name → its clones, from `/proc/kallsyms` text.
pub fn clones(kallsyms: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in kallsyms.lines() {
        let mut f = line.split_whitespace();
        let (Some(_), Some(kind), Some(sym)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let Some((base, suffix)) = sym.split_once('.') else {
            continue;
        };
        if ["part.", "isra.", "constprop."]
            .iter()
            .any(|p| suffix.starts_with(p))
        {
            out.entry(base.to_string())
                .or_default()
                .push(sym.to_string());
        }
    }
    out
}

/// The running kernel's clones; empty when /proc/kallsyms is unreadable.
pub fn running_kernel_clones() -> BTreeMap<String, Vec<String>> {
    std::fs::read_to_string("/proc/kallsyms")
        .map(|s| clones(&s))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_split_and_specialised_copies_only() {
        let text = "\
ffffffff81a0 T __tcp_retransmit_skb
ffffffff81a1 t __tcp_retransmit_skb.part.0
ffffffff81a2 T tcp_sendmsg
ffffffff81a3 t tcp_sendmsg.cold
ffffffff81a4 t foo.isra.0
ffffffff81a5 t bar.constprop.3
ffffffff81a6 d data.part.0
garbage
";
        let c = clones(text);
        assert_eq!(
            c["__tcp_retransmit_skb"],
            vec!["__tcp_retransmit_skb.part.0".to_string()]
        );
        assert!(!c.contains_key("tcp_sendmsg"), ".cold is not a clone");
        assert!(c.contains_key("foo") && c.contains_key("bar"));
        assert!(!c.contains_key("data"), "only text symbols");
    }
}
