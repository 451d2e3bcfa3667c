//! Quota windows as properties: for any interleaving of requests, no
//! window admits more than its limit.
//!
//! - In process ([`LocalQuota`]): a model of time. Requests of several
//!   tenants arrive at arbitrary instants across minute and day boundaries;
//!   the backend must admit exactly what a plain count per window allows.
//! - In Redis ([`RedisQuota`]): a cluster of two to four nodes, each its
//!   own `RedisQuota` (its own leases) on the one real Redis, sends bursts
//!   of concurrent requests in an arbitrary order. Admitted requests never
//!   exceed the minute or the day limit, and at most the units the nodes
//!   hold in unspent leases go unserved.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use wasmwiz::quota::local::LocalQuota;
use wasmwiz::quota::redis::{RedisQuota, lease_size};
use wasmwiz::quota::{DAY, MINUTE, QuotaBackend as _, Rates, unix_now};

use crate::helpers::{shared_redis_url, unique_prefix};

fn rates() -> impl Strategy<Value = Rates> {
    let limit = prop_oneof![Just(None), (1u64..40).prop_map(Some), (256u64..700).prop_map(Some)];
    (limit.clone(), limit).prop_map(|(per_minute, per_day)| Rates { per_minute, per_day })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The in-process backend admits a request exactly when both of its
    /// windows have room, whatever the order and spacing of requests.
    #[test]
    fn in_process_windows_admit_exactly_their_limits(
        rates in rates(),
        // Steps: tenant (of 3), and seconds since the last request (0 most
        // often, so windows fill; sometimes across a minute or a day).
        steps in prop::collection::vec(
            (0i64..3, prop_oneof![8 => Just(0u64), 3 => 0u64..70, 1 => Just(DAY)]),
            1..400,
        ),
        // Start anywhere in a day, just before a minute ends at times.
        start_second in 0u64..DAY,
    ) {
        let quota = LocalQuota::new();
        let mut now = 1_795_737_600 + start_second; // a day of 2026-11
        let mut admitted: HashMap<(i64, char, u64), u64> = HashMap::new();
        for (tenant, gap) in steps {
            now += gap;
            let (minute, day) = (now / MINUTE, now / DAY);
            let used = |admitted: &HashMap<_, u64>, key| admitted.get(&key).copied().unwrap_or(0);
            let room = |limit: Option<u64>, used: u64| limit.is_none_or(|l| used < l);
            let expected = room(rates.per_minute, used(&admitted, (tenant, 'm', minute)))
                && room(rates.per_day, used(&admitted, (tenant, 'd', day)));
            let admission = quota.admit_at(tenant, rates, now, true);
            prop_assert_eq!(admission.allowed, expected, "at {}", now);
            if admission.allowed {
                *admitted.entry((tenant, 'm', minute)).or_default() += 1;
                *admitted.entry((tenant, 'd', day)).or_default() += 1;
            }
            // What the answer reports is what was counted.
            prop_assert_eq!(admission.minute.used, used(&admitted, (tenant, 'm', minute)));
            prop_assert_eq!(admission.day.used, used(&admitted, (tenant, 'd', day)));
        }
        for ((_, window, _), count) in &admitted {
            let limit = if *window == 'm' { rates.per_minute } else { rates.per_day };
            prop_assert!(limit.is_none_or(|l| *count <= l));
        }
    }
}

/// One burst: a node and how many requests it sends at once.
type Burst = (usize, usize);

fn cluster_case() -> impl Strategy<Value = (usize, Rates, Vec<Vec<Burst>>)> {
    (2usize..=4, rates()).prop_flat_map(|(nodes, rates)| {
        // Rounds of bursts from several nodes at once, all in flight
        // together; rounds follow one another.
        let burst = (0..nodes, 1usize..24);
        let round = prop::collection::vec(burst, 1..=nodes * 2);
        (Just(nodes), Just(rates), prop::collection::vec(round, 1..30))
    })
}

proptest! {
    // Each case is a cluster on the real Redis: fewer cases, each a few
    // hundred requests.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Nodes sharing one Redis never admit more than a window's limit
    /// between them, and serve all but what their unspent leases hold.
    #[test]
    fn nodes_sharing_redis_never_admit_more_than_a_limit((nodes, rates, rounds) in cluster_case()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (admitted, sent, degraded, same_minute) = runtime.block_on(async {
            let prefix = unique_prefix();
            let url = shared_redis_url();
            let cluster: Vec<_> = (0..nodes)
                .map(|_| RedisQuota::connect(&url, &prefix, Duration::from_secs(2)).unwrap())
                .collect();
            let minute_before = unix_now() / MINUTE;
            let (mut admitted, mut sent, mut degraded) = (0u64, 0u64, 0u64);
            for round in &rounds {
                let answers = futures::future::join_all(round.iter().flat_map(|&(node, n)| {
                    let quota = cluster[node].clone();
                    (0..n).map(move |_| {
                        let quota = quota.clone();
                        async move { quota.admit(7, rates).await }
                    })
                }))
                .await;
                for answer in answers {
                    sent += 1;
                    admitted += u64::from(answer.allowed);
                    degraded += u64::from(answer.degraded);
                }
            }
            let same_minute = unix_now() / MINUTE == minute_before;
            (admitted, sent, degraded, same_minute)
        });
        // A degraded answer would be a per-node count, outside this property.
        prop_assert_eq!(degraded, 0);
        if same_minute {
            prop_assert!(rates.per_minute.is_none_or(|l| admitted <= l),
                "{} admitted, minute limit {:?}", admitted, rates.per_minute);
        }
        prop_assert!(rates.per_day.is_none_or(|l| admitted <= l),
            "{} admitted, day limit {:?}", admitted, rates.per_day);
        // Nothing is refused that a window had room for, but for the units
        // each node may hold in a lease it has not spent.
        if same_minute {
            let limit = rates.per_minute.unwrap_or(u64::MAX).min(rates.per_day.unwrap_or(u64::MAX));
            // Per node: the unspent rest of the lease being spent, the one
            // taken ahead of it, and one more taken after both expired (a
            // lease stops at least 50 ms before its minute ends, later
            // when its call was slow; another may be taken until 200 ms
            // before, and none is taken ahead then).
            let stranded =
                if lease_size(rates) > 1 { 3 * nodes as u64 * lease_size(rates) } else { 0 };
            prop_assert!(admitted + stranded >= sent.min(limit),
                "{} admitted of {} sent, limit {}, up to {} held in leases",
                admitted, sent, limit, stranded);
        }
    }
}
