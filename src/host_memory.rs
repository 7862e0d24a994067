//! How much memory this machine can still give the process, so that a model
//! or batch too large for it is refused up front with the reason, instead of
//! aborting on a failed allocation or being killed part-way through a run.

/// Bytes the process can still allocate: the kernel's estimate of memory
/// available without swapping out (`MemAvailable`) plus free swap, or the
/// room left under the process's control-group limit where that is smaller.
/// `None` where the system does not say (not Linux, or no `/proc`); callers
/// then skip their checks.
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let machine = available_in_meminfo(&meminfo)?;
    Some(match cgroup_room() {
        Some(room) => room.min(machine),
        None => machine,
    })
}

/// `MemAvailable + SwapFree` of a `/proc/meminfo` text, in bytes.
pub fn available_in_meminfo(meminfo: &str) -> Option<u64> {
    let kib = |key: &str| {
        meminfo.lines().find_map(|line| {
            let rest = line.strip_prefix(key)?.strip_prefix(':')?;
            rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    let available = kib("MemAvailable")?;
    let swap = kib("SwapFree").unwrap_or(0);
    Some((available + swap) * 1024)
}

/// Room under the control group's memory limit (version 2, else 1), when it
/// has one: a container's limit is often far below the machine's memory.
fn cgroup_room() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let v2 = "/sys/fs/cgroup/";
    let v1 = "/sys/fs/cgroup/memory/";
    let (limit, usage, stat, cache_key) = match read(&format!("{v2}memory.max")) {
        Some(limit) => (
            limit,
            read(&format!("{v2}memory.current"))?,
            read(&format!("{v2}memory.stat")),
            "file",
        ),
        None => (
            read(&format!("{v1}memory.limit_in_bytes"))?,
            read(&format!("{v1}memory.usage_in_bytes"))?,
            read(&format!("{v1}memory.stat")),
            "total_cache",
        ),
    };
    let cache = stat.as_deref().and_then(|s| stat_value(s, cache_key));
    room_under_limit(&limit, &usage, cache.unwrap_or(0))
}

/// The value of `key` in a control group's `memory.stat`.
fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        if name != key {
            return None;
        }
        value.trim().parse().ok()
    })
}

/// `limit − (usage − cache)` from a control group's figures: its page cache
/// counts as usage but is given back under pressure, so it is room too.
/// `None` for no limit (`max` in version 2, a near-`i64::MAX` figure in
/// version 1).
pub fn room_under_limit(limit: &str, usage: &str, cache: u64) -> Option<u64> {
    let limit = limit.trim().parse::<u64>().ok()?;
    let usage = usage.trim().parse::<u64>().ok()?;
    (limit < 1 << 62).then(|| limit.saturating_sub(usage.saturating_sub(cache)))
}

/// `bytes` for people: `12 bytes`, `196 KiB`, `512 MiB`, `3.2 GiB`,
/// `1024 GiB`.
pub fn describe_bytes(bytes: u128) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let mib = bytes as f64 / MIB;
    if bytes < 1024 {
        format!("{bytes} bytes")
    } else if bytes < 1 << 20 {
        format!("{:.0} KiB", bytes as f64 / 1024.0)
    } else if mib < 1024.0 {
        format!("{mib:.0} MiB")
    } else if mib < 10.0 * 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{:.0} GiB", mib / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_gives_available_memory_and_free_swap() {
        let text = "MemTotal:       24683652 kB\nMemFree:         1000 kB\n\
                    MemAvailable:   24212116 kB\nSwapTotal: 2048 kB\nSwapFree:    1024 kB\n";
        assert_eq!(available_in_meminfo(text), Some((24212116 + 1024) * 1024));
        assert_eq!(
            available_in_meminfo("MemAvailable: 10 kB\n"),
            Some(10 * 1024)
        );
        assert_eq!(available_in_meminfo("MemTotal: 10 kB\n"), None);
        // A key that only starts like the one asked for is not it.
        assert_eq!(available_in_meminfo("MemAvailableX: 10 kB\n"), None);
    }

    #[test]
    fn a_control_groups_room_is_its_limit_less_what_it_cannot_give_back() {
        assert_eq!(room_under_limit("max\n", "334811136\n", 0), None);
        assert_eq!(
            room_under_limit("9223372036854771712\n", "334811136\n", 0),
            None
        );
        assert_eq!(room_under_limit("1000\n", "300\n", 0), Some(700));
        assert_eq!(room_under_limit("1000\n", "300\n", 200), Some(900));
        assert_eq!(room_under_limit("1000\n", "3000\n", 0), Some(0));
        let stat = "cache 9625600\ntotal_cache 4960747520\nfile 77\n";
        assert_eq!(stat_value(stat, "total_cache"), Some(4960747520));
        assert_eq!(stat_value(stat, "file"), Some(77));
        assert_eq!(stat_value(stat, "anon"), None);
    }

    #[test]
    fn sizes_read_in_the_unit_that_suits_them() {
        assert_eq!(describe_bytes(12), "12 bytes");
        assert_eq!(describe_bytes(200_704), "196 KiB");
        assert_eq!(describe_bytes(512 << 20), "512 MiB");
        assert_eq!(describe_bytes(3 << 30), "3.0 GiB");
        assert_eq!(describe_bytes(1024 << 30), "1024 GiB");
    }

    #[test]
    fn this_machine_says_how_much_is_free() {
        if cfg!(target_os = "linux") {
            assert!(available_bytes().is_some_and(|b| b > 0));
        }
    }
}
