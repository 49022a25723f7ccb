// Sequence-parallel forward and backward: the CPU engine's shard calls with the state
// collectives between them (DESIGN.md §3, attention.hpp).
#include <mpi.h>

#include "racesp/distributed.hpp"

namespace racesp {

namespace {

// A rank whose data-parallel group got no batch entries still takes part in every collective
// of its group (with zero-length states, as do its group peers) and in the dbeta sum; the
// engine's calls reject an empty batch, so they are skipped there.
bool has_work(const Shape& shape) { return shape.batch > 0; }

State empty_state(const AttentionConfig& config, const Shape& shape) {
    return State(shape.batch, shape.heads, config.features(), shape.dim);
}

// The forward state each local query needs: non-causal the sum over every key of the sequence,
// causal the sum over the keys of earlier shards. Adds compute and collective time to `times`.
State incoming_forward(Collectives& sp, const AttentionConfig& config, const Planes& planes, ConstTensor k,
                       ConstTensor v, const CpuOptions& options, StepTimes& times) {
    double t0 = MPI_Wtime();
    State s = has_work(k.shape()) ? key_state(config, planes, k, v, options) : empty_state(config, k.shape());
    double t1 = MPI_Wtime();
    if (config.causal) {
        sp.exscan_sum(s.data(), s.size());
    } else {
        sp.allreduce_sum(s.data(), s.size());
    }
    double t2 = MPI_Wtime();
    times.compute_s += t1 - t0;
    times.collective_s += t2 - t1;
    return s;
}

}  // namespace

StepTimes distributed_forward(Collectives& sp, const AttentionConfig& config, const Planes& planes,
                              ConstTensor q, ConstTensor k, ConstTensor v, MutTensor o,
                              const CpuOptions& options) {
    StepTimes times;
    if (has_work(q.shape())) check_shapes(planes, q, k, v);
    State s = incoming_forward(sp, config, planes, k, v, options, times);
    double t0 = MPI_Wtime();
    if (has_work(q.shape())) forward(config, planes, q, k, v, s, o, options);
    times.compute_s += MPI_Wtime() - t0;
    return times;
}

StepTimes distributed_backward(Collectives& sp, MPI_Comm world, const AttentionConfig& config,
                               const Planes& planes, ConstTensor q, ConstTensor k, ConstTensor v,
                               ConstTensor dout, MutTensor dq, MutTensor dk, MutTensor dv,
                               double& dbeta, const CpuOptions& options) {
    StepTimes times;
    if (has_work(q.shape())) check_shapes(planes, q, k, v);
    // The backward recomputes the forward state rather than keeping it from the forward call.
    State s = incoming_forward(sp, config, planes, k, v, options, times);

    double t0 = MPI_Wtime();
    State u = has_work(q.shape()) ? query_state(config, planes, q, k, v, dout, s, options)
                                  : empty_state(config, q.shape());
    double t1 = MPI_Wtime();
    // Non-causal: U over every query; causal: over the queries of later shards.
    if (config.causal) {
        sp.reverse_exscan_sum(u.data(), u.size());
    } else {
        sp.allreduce_sum(u.data(), u.size());
    }
    double t2 = MPI_Wtime();
    double local_dbeta = 0.0;
    if (has_work(q.shape())) local_dbeta = backward(config, planes, q, k, v, dout, s, u, dq, dk, dv, options);
    double t3 = MPI_Wtime();
    // beta is one scalar for the whole model: sum over every batch entry (data-parallel groups)
    // and every token (sequence-parallel ranks).
    MPI_Allreduce(&local_dbeta, &dbeta, 1, MPI_DOUBLE, MPI_SUM, world);
    double t4 = MPI_Wtime();

    times.compute_s += (t1 - t0) + (t3 - t2);
    times.collective_s += (t2 - t1) + (t4 - t3);
    return times;
}

}  // namespace racesp
