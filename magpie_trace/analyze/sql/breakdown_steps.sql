-- breakdown_steps: the breakdown of each rank within each of its steps.
--
-- A step is the rank's step annotation (ProfilerStep#N, SGLang step[...], vLLM execute_...; see
-- the steps table). Its window is the first start to the last end of the measured events the step
-- owns: a GPU kernel belongs to the step of the CPU call that launched it, so on a GPU rank the
-- window follows the GPU, which runs behind the CPU; where two windows overlap, the shared time goes
-- to the later step. The segments are cut at the windows and carry their step, so this is a sum per
-- (rank, step). Empty when the traces have no step annotations.
SELECT r.node, s.rank, s.step,
       sum(s.t1_ns - s.t0_ns) / 1e3 AS total_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.compute OR s.comm OR s.memcpy), 0) / 1e3 AS busy_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.compute), 0) / 1e3 AS compute_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.comm), 0) / 1e3 AS comm_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.compute AND NOT s.comm), 0) / 1e3 AS compute_only_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.comm AND s.compute), 0) / 1e3 AS overlapped_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.comm AND NOT s.compute), 0) / 1e3 AS exposed_comm_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE s.memcpy AND NOT s.compute AND NOT s.comm), 0) / 1e3
           AS memcpy_only_us,
       coalesce(sum(s.t1_ns - s.t0_ns) FILTER (WHERE NOT (s.compute OR s.comm OR s.memcpy)), 0) / 1e3 AS idle_us
FROM segments s JOIN ranks r USING (rank)
WHERE s.step IS NOT NULL
GROUP BY r.node, s.rank, s.step
ORDER BY s.step, s.rank;
