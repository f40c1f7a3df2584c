-- collective_families: communication per process group and collective family, split by whether
-- the group stays inside one node or crosses nodes (from the nodes of the ranks that ran it).
--
-- For each matched collective: time_us is the shortest duration over its ranks, i.e. that of the
-- last rank to arrive, which did not wait: the transfer itself. msg_bytes is what the trace records
-- (kernel or c10d args: the larger of input and output, as nccl-tests counts), so empty for traces
-- without collective metadata (e.g. the vLLM CPU build's gloo). Bandwidths follow nccl-tests:
-- algbw = bytes / time, busbw = algbw * 2(n-1)/n for all-reduce, (n-1)/n for all-gather,
-- reduce-scatter and all-to-all, 1 otherwise (n = ranks in the group).
WITH sizes AS (
    SELECT collective, max(msg_bytes) AS msg_bytes, any_value(algorithm) AS algorithm,
           any_value(process_group) FILTER (WHERE process_group IS NOT NULL) AS pg_from_args
    FROM events WHERE collective IS NOT NULL
    GROUP BY collective
),
instances AS (
    SELECT c.collective, any_value(c.process_group) AS process_group, any_value(c.family) AS family,
           count(*) AS n_ranks, count(DISTINCT c.node) AS n_nodes,
           min(c.duration_us) AS time_us, max(c.duration_us) AS max_duration_us,
           max(c.arrival_skew_us) AS arrival_skew_us
    FROM collectives c GROUP BY c.collective
)
SELECT coalesce(nullif(i.process_group, ''), s.pg_from_args, '') AS process_group, i.family,
       CASE WHEN i.n_nodes > 1 THEN 'inter-node' ELSE 'intra-node' END AS scope,
       i.n_ranks AS ranks, i.n_nodes AS nodes, count(*) AS calls,
       sum(i.time_us) AS time_us, avg(i.time_us) AS mean_time_us, median(i.time_us) AS p50_time_us,
       quantile_cont(i.time_us, 0.95) AS p95_time_us,
       avg(i.arrival_skew_us) AS mean_arrival_skew_us,
       avg(s.msg_bytes) AS mean_msg_bytes,
       string_agg(DISTINCT s.algorithm, ',') AS algorithm,
       sum(s.msg_bytes) / nullif(sum(i.time_us) FILTER (WHERE s.msg_bytes IS NOT NULL), 0) / 1e3 AS algbw_gbps,
       sum(s.msg_bytes) / nullif(sum(i.time_us) FILTER (WHERE s.msg_bytes IS NOT NULL), 0) / 1e3
           * CASE WHEN i.family = 'allreduce' THEN 2.0 * (i.n_ranks - 1) / i.n_ranks
                  WHEN i.family IN ('allgather', 'reducescatter', 'alltoall', 'alltoallv')
                      THEN (i.n_ranks - 1) * 1.0 / i.n_ranks
                  ELSE 1.0 END AS busbw_gbps
FROM instances i LEFT JOIN sizes s USING (collective)
GROUP BY coalesce(nullif(i.process_group, ''), s.pg_from_args, ''), i.family, i.n_ranks, i.n_nodes
ORDER BY time_us DESC;
