"""Data-parallel training over MPI (mpi4py on Open MPI or any MPI): ``mpiexec -n N numgpt train``.

N processes ("ranks") hold the same model. Each optimizer step takes one
global batch of K x N loader batches (K = --grad-accum): rank r runs the K
micro-batches r*K .. r*K + K - 1 of it, every loss divided by K as usual,
and the ranks then average their gradients:

    g = (1/N) sum over ranks of g_r        (an MPI allreduce of the sum)

so every rank applies the same AdamW step to the same weights. The data a
step sees does not depend on N: every rank walks the same shuffled loader
and takes its share of each global batch. One process with --grad-accum 2
and two processes with --grad-accum 1 take the same two micro-batches per
step; scaling a gradient by 1/2 is exact in binary floating point and the
sum of two float32 arrays does not depend on their order, so the two runs
agree bit for bit (tests/test_distributed.py). Dropout draws from a stream
keyed by the micro-batch's place in the run (numgpt.training.train), not by the rank.

The gradients travel in buckets: flat float32 buffers of about
``BUCKET_BYTES``, filled in the order the backward pass completes the
parameters' gradients (the last layer's first). A bucket's allreduce starts
(non-blocking, ``Iallreduce``) as soon as its last gradient is complete, so
communication overlaps the rest of the backward pass; after the pass, each
averaged bucket is copied back into the parameters' ``.grad``.

``world()`` is the process's view: ``World`` (one process, every method a
no-op) unless the process was started by mpiexec, in which case mpi4py is
imported, and only then.
"""
import functools
import os
import sys
import time

import numpy

from numgpt.errors import UsageError

BUCKET_BYTES = 25 * 2 ** 20          # PyTorch DDP's default bucket size
# set by mpiexec / srun in each rank's environment (Open MPI, MPICH/Hydra and PMIx launchers)
_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")
_LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PALS_LOCAL_SIZE")


class World:
    """One process: rank 0 of 1."""

    rank, size, local_size = 0, 1, 1

    @property
    def is_main(self):
        return self.rank == 0

    def sum(self, value):
        """The sum over the ranks of a float."""
        return value

    def any(self, flag):
        """Whether any rank says True."""
        return bool(flag)

    def barrier(self):
        pass

    def broadcast(self, value):
        """Rank 0's value of a picklable-free Python scalar or string, on every rank."""
        return value

    def gradient_averager(self, params):
        return None

    def abort(self, code=1):
        sys.exit(code)


class MPIWorld(World):
    """N processes started by mpiexec; mpi4py's COMM_WORLD."""

    def __init__(self):
        try:
            # optional: the mpi extra
            from mpi4py import MPI
        except ImportError as error:
            raise UsageError(f"this process was started by mpiexec but mpi4py cannot be imported ({error}): "
                             f"pip install 'numgpt[mpi]'") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = local.Get_size()
        local.Free()

    def sum(self, value):
        return self.comm.allreduce(float(value), op=self.MPI.SUM)

    def any(self, flag):
        return bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.MAX))

    def barrier(self):
        self.comm.Barrier()

    def broadcast(self, value):
        return self.comm.bcast(value, root=0)

    def gradient_averager(self, params):
        return GradientAverager(self, params)

    def abort(self, code=1):
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


def launched_by_mpi():
    """Whether an MPI launcher started this process with more than one rank in all."""
    for name in _SIZE_VARIABLES:
        if name in os.environ:
            try:
                return int(os.environ[name]) > 1
            except ValueError:
                return False
    return False


@functools.lru_cache(maxsize=None)
def world():
    """This process's World: MPIWorld under mpiexec with N > 1, else one process."""
    return MPIWorld() if launched_by_mpi() else World()


def local_ranks():
    """Ranks on this machine, from the launcher's environment (1 when not launched by MPI)."""
    for name in _LOCAL_SIZE_VARIABLES:
        if name in os.environ:
            try:
                return max(1, int(os.environ[name]))
            except ValueError:
                pass
    return 1


class GradientAverager:
    """Average the parameters' gradients over the ranks, bucket by bucket, overlapping the backward pass.

    ``arm()`` before the backward pass whose gradients are to be averaged (the
    last micro-batch of a step); ``finish()`` after it waits for the buckets
    and writes the averages into ``.grad``. Buckets follow the reverse order
    of ``params`` (the backward pass completes the last layer first).
    """

    def __init__(self, world, params, bucket_bytes=BUCKET_BYTES):
        self.world = world
        self.params = [p for p in params if p.requires_grad]
        self.buckets = []                      # [(params, flat buffer, offsets)]
        current, size = [], 0
        for param in reversed(self.params):
            current.append(param)
            size += param.data.size
            if size * 4 >= bucket_bytes:
                self.buckets.append(current)
                current, size = [], 0
        if current:
            self.buckets.append(current)
        self.buffers = [numpy.empty(sum(p.data.size for p in bucket), dtype=numpy.float32) for bucket in self.buckets]
        self.bucket_of = {id(p): i for i, bucket in enumerate(self.buckets) for p in bucket}
        self.armed = False
        self.pending = [None] * len(self.buckets)
        self.waiting = [0] * len(self.buckets)
        self.handles = [p.register_post_accumulate_grad_hook(self._ready) for p in self.params]

    def arm(self):
        self.armed = True
        self.waiting = [len(bucket) for bucket in self.buckets]
        self.pending = [None] * len(self.buckets)

    def _ready(self, param):
        if not self.armed:
            return
        i = self.bucket_of[id(param)]
        self.waiting[i] -= 1
        if self.waiting[i] == 0:               # the bucket's last gradient: send it while the backward goes on
            self._copy_in(i)
            self.pending[i] = self.world.comm.Iallreduce(self.world.MPI.IN_PLACE, self.buffers[i],
                                                         op=self.world.MPI.SUM)
        # MPI moves a non-blocking collective on only while the process calls into MPI (no progress
        # thread by default): each gradient that completes gives the buckets in flight a turn
        in_flight = [request for request in self.pending if request is not None]
        if in_flight:
            self.world.MPI.Request.Testall(in_flight)

    def _copy_in(self, i):
        offset = 0
        for param in self.buckets[i]:
            n = param.data.size
            grad = param.grad if param.grad is not None else numpy.zeros_like(param.data)
            self.buffers[i][offset:offset + n] = numpy.asarray(grad, dtype=numpy.float32).reshape(-1)
            offset += n

    def finish(self):
        """Wait for every bucket (starting those a parameter without a gradient held back) and write
        the averages into ``.grad``. ``last_wait_s``: the seconds spent waiting for the network."""
        scale = numpy.float32(1.0 / self.world.size)
        for i in range(len(self.buckets)):
            if self.pending[i] is None:        # a parameter got no gradient this step: send the bucket now
                self._copy_in(i)
                self.pending[i] = self.world.comm.Iallreduce(self.world.MPI.IN_PLACE, self.buffers[i],
                                                             op=self.world.MPI.SUM)
        self.last_wait_s = 0.0
        for i, bucket in enumerate(self.buckets):
            start = time.perf_counter()
            self.pending[i].Wait()
            self.last_wait_s += time.perf_counter() - start
            self.buffers[i] *= scale                                        # the mean, in place
            offset = 0
            for param in bucket:
                n = param.data.size
                averaged = self.buffers[i][offset:offset + n].reshape(param.data.shape)
                if param.grad is not None and param.grad.dtype == param.data.dtype and param.grad.flags.writeable:
                    param.grad[...] = averaged                              # into the gradient's own array
                else:
                    param.grad = averaged.astype(param.data.dtype)          # a copy: the buffer is reused
                offset += n
        self.armed = False

    def remove(self):
        for handle in self.handles:
            handle.remove()
