"""Checks in the manner of Horovod's test/parallel/test_torch.py (written for shoal, same
expectations), run as a unittest program on every rank under `shoal launch`."""
import itertools
import unittest

import numpy as np
import torch

import shoal.horovod as hvd

INTS = [torch.int32, torch.int64]
FLOATS = [torch.float32, torch.float64]


def _random(shape, dtype, seed=1234):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-100, 100, shape, generator=g).to(dtype)


class HorovodTorchTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        hvd.init()
        cls.rank, cls.size = hvd.rank(), hvd.size()

    def test_rank_and_size(self):
        ranks = hvd.allgather(torch.tensor([hvd.rank()]))
        self.assertEqual(ranks.tolist(), list(range(hvd.size())))

    def test_allreduce_sums_every_dtype_and_rank_count(self):
        for dtype, dim in itertools.product(INTS + FLOATS, [1, 2, 3]):
            t = _random([17] * dim, dtype)
            summed = hvd.allreduce(t, average=False)
            self.assertTrue(torch.equal(summed, t * self.size), (dtype, dim))

    def test_allreduce_average_is_the_tensor(self):
        for dtype, dim in itertools.product(INTS + FLOATS, [1, 2, 3]):
            t = _random([17] * dim, dtype)
            self.assertTrue(torch.equal(hvd.allreduce(t, average=True), t), (dtype, dim))

    def test_allreduce_inplace_and_scale_factors(self):
        for dtype in FLOATS:
            t = _random([5, 5], dtype)
            out = t.clone()
            hvd.allreduce_(out, op=hvd.Sum, prescale_factor=0.5, postscale_factor=3.0)
            self.assertTrue(torch.allclose(out, t * self.size * 1.5))

    def test_many_async_allreduces_fuse_and_poll(self):
        tensors = [_random([17, 3], torch.float32, seed=i) for i in range(20)]
        handles = [hvd.allreduce_async(t, name=f"fused.{i}", op=hvd.Sum)
                   for i, t in enumerate(tensors)]
        outs = [hvd.synchronize(h) for h in handles]
        for t, o in zip(tensors, outs):
            self.assertTrue(torch.equal(o, t * self.size))
        h = hvd.allreduce_async(torch.ones(3), name="polled")
        while not hvd.poll(h):
            pass
        self.assertEqual(hvd.synchronize(h).tolist(), [1.0] * 3)

    def test_grouped_allreduce(self):
        for dtype in INTS + FLOATS:
            ts = [_random([17] * d, dtype, seed=d) for d in (1, 2, 3)]
            outs = hvd.grouped_allreduce(ts, op=hvd.Sum)
            for t, o in zip(ts, outs):
                self.assertTrue(torch.equal(o, t * self.size))

    def test_allreduce_grad(self):
        for dim in (1, 2, 3):
            t = torch.ones([5] * dim, requires_grad=True)
            hvd.allreduce(t, average=False).backward(torch.ones([5] * dim))
            self.assertTrue(np.allclose(t.grad.numpy(), self.size))

    def test_allgather_variable_first_dims(self):
        sizes = [17, 32, 81, 12, 15, 23, 22][:self.size]
        for dtype, dim in itertools.product(INTS + FLOATS + [torch.uint8], [1, 2, 3]):
            t = torch.full([sizes[self.rank]] + [17] * (dim - 1), self.rank).to(dtype)
            gathered = hvd.allgather(t)
            self.assertEqual(list(gathered.shape), [sum(sizes)] + [17] * (dim - 1))
            at = 0
            for r, n in enumerate(sizes):
                self.assertTrue(torch.all(gathered[at:at + n] == r))
                at += n

    def test_allgather_grad(self):
        sizes = [3, 2, 7, 4, 6][:self.size]
        t = torch.full([sizes[self.rank], 4], float(self.rank), requires_grad=True)
        grad = torch.cat([torch.full([n, 4], float(r)) for r, n in enumerate(sizes)])
        hvd.allgather(t).backward(grad)
        self.assertTrue(torch.equal(t.grad, torch.full([sizes[self.rank], 4], float(self.rank))))

    def test_broadcast_from_every_root(self):
        for dtype, dim, root in itertools.product(INTS + FLOATS, [1, 2, 3], range(self.size)):
            t = torch.full([17] * dim, self.rank).to(dtype)
            self.assertTrue(torch.all(hvd.broadcast(t, root) == root))
            self.assertTrue(torch.all(t == self.rank))          # the input is untouched

    def test_broadcast_grad(self):
        for root in range(self.size):
            t = torch.full([5], float(self.rank), requires_grad=True)
            hvd.broadcast(t, root).backward(torch.ones(5))
            self.assertEqual(t.grad.tolist(), [1.0 if self.rank == root else 0.0] * 5)

    def test_alltoall_with_splits(self):
        for dtype in INTS + FLOATS:
            vals = torch.cat([torch.full([r + 1, 2], r) for r in range(self.size)]).to(dtype)
            splits = torch.tensor([r + 1 for r in range(self.size)], dtype=torch.int32)
            out, received = hvd.alltoall(vals, splits)
            self.assertEqual(received.tolist(), [self.rank + 1] * self.size)
            self.assertTrue(torch.all(out == self.rank))
            self.assertEqual(out.shape[0], (self.rank + 1) * self.size)

    def test_alltoall_grad(self):
        vals = torch.cat([torch.full([r + 1, 2], float(self.rank)) for r in range(self.size)])
        vals.requires_grad_()
        splits = torch.tensor([r + 1 for r in range(self.size)], dtype=torch.int32)
        out, _ = hvd.alltoall(vals, splits)
        (out * (self.rank + 1)).sum().backward()     # rows sent to rank q get gradient q + 1
        want = torch.cat([torch.full([q + 1, 2], float(q + 1)) for q in range(self.size)])
        self.assertTrue(torch.equal(vals.grad, want))

    def test_reducescatter_grad(self):
        for op, scale in ((hvd.Sum, 1.0), (hvd.Average, 1.0 / self.size)):
            t = torch.ones([self.size * 2, 3], requires_grad=True)
            part = hvd.reducescatter(t, op=op)
            (part * (self.rank + 1)).sum().backward()
            want = torch.cat([torch.full([2, 3], (q + 1) * scale) for q in range(self.size)])
            self.assertTrue(torch.allclose(t.grad, want), op)

    def test_reducescatter(self):
        for dtype in INTS + FLOATS:
            t = _random([self.size * 4, 3], dtype)
            part = hvd.reducescatter(t, op=hvd.Sum)
            self.assertTrue(torch.equal(part, (t * self.size)[self.rank * 4:(self.rank + 1) * 4]))

    def test_join_allreduce_with_fusion_and_floor_average(self):
        for dtype, first_join in itertools.product(INTS + FLOATS, range(min(2, self.size))):
            a, b = _random([5, 5], dtype, 1), _random([17], dtype, 2)
            if self.rank == first_join:
                hvd.join()
                continue
            ha = hvd.allreduce_async(a, name="join.a", average=True)
            hb = hvd.allreduce_async(b, name="join.b", average=True)
            avg_a, avg_b = hvd.synchronize(ha), hvd.synchronize(hb)
            hvd.join()

            def div(t):
                return t.floor_divide(self.size) if dtype in INTS else t / self.size
            self.assertTrue(torch.allclose(avg_a, div(a * (self.size - 1))), dtype)
            self.assertTrue(torch.allclose(avg_b, div(b * (self.size - 1))), dtype)

    def test_broadcast_and_allgather_object(self):
        obj = {"rank": self.rank, "data": list(range(self.rank))}
        self.assertEqual(hvd.broadcast_object(obj, root_rank=0), {"rank": 0, "data": []})
        self.assertEqual([o["rank"] for o in hvd.allgather_object(obj)], list(range(self.size)))

    def test_duplicate_name_while_in_flight(self):
        # rank 0 submits "dup" while the others wait on "gate", so "dup" cannot finish yet
        if self.rank == 0:
            h = hvd.allreduce_async(torch.ones(3), name="dup", op=hvd.Sum)
            with self.assertRaises(ValueError):
                hvd.allreduce_async(torch.ones(3), name="dup")
            hvd.allreduce(torch.ones(1), name="gate")
        else:
            hvd.allreduce(torch.ones(1), name="gate")
            h = hvd.allreduce_async(torch.ones(3), name="dup", op=hvd.Sum)
        self.assertEqual(hvd.synchronize(h).tolist(), [float(self.size)] * 3)

    def test_mismatched_shape_raises_on_every_rank_then_works(self):
        with self.assertRaises(RuntimeError):
            hvd.allreduce(torch.ones(self.rank + 1))
        self.assertEqual(hvd.allreduce(torch.ones(2), op=hvd.Sum).tolist(), [float(self.size)] * 2)


if __name__ == "__main__":
    unittest.main(verbosity=1)
