-- breakdown: per rank, where the time between its first and last busy instant went (a sum over
-- the rank's segments: see the segments table).
--
-- total_us        first start to last end of the rank's measured activity (GPU kernels and copies
--                 on a GPU rank, CPU ops and collectives on a CPU-only rank): TraceLens's total_time
-- compute_us      any compute running (TraceLens computation_time)
-- comm_us         any communication running (TraceLens total_comm_time)
-- overlapped_us   communication while compute runs (hidden behind compute)
-- exposed_comm_us communication while no compute runs (TraceLens exposed_comm_time); the same as
--                 comm_only_us, kept under both names
-- compute_only_us compute while no communication runs
-- memcpy_only_us  copies while neither runs (TraceLens exposed_memcpy_time)
-- busy_us, idle_us  anything running / nothing running
-- compute_only + overlapped + exposed_comm + memcpy_only + idle = total.
SELECT r.rank, r.node, r.label,
       any_value(r.domain) AS domain,
       (max(s.t1_ns) - min(s.t0_ns)) / 1e3 AS total_us,
       sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.compute OR s.comm OR s.memcpy) / 1e3 AS busy_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.compute), 0) / 1e3 AS compute_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.comm), 0) / 1e3 AS comm_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.memcpy), 0) / 1e3 AS memcpy_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.compute AND NOT s.comm), 0) / 1e3 AS compute_only_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.comm AND s.compute), 0) / 1e3 AS overlapped_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.comm AND NOT s.compute), 0) / 1e3 AS comm_only_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.comm AND NOT s.compute), 0) / 1e3 AS exposed_comm_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.memcpy AND NOT s.compute AND NOT s.comm), 0) / 1e3
           AS memcpy_only_us,
       ((max(s.t1_ns) - min(s.t0_ns))
        - coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.compute OR s.comm OR s.memcpy), 0)) / 1e3 AS idle_us
FROM segments s JOIN ranks r USING (rank)
GROUP BY r.rank, r.node, r.label
ORDER BY r.rank;
