"""Router time on hostile registries: ``form_cohort`` over N overlapping offers from distinct keys.

Usage: python bench/router.py [--layers 30] [--offers 200] [--seeds 20]

Three registry shapes, each next to one honest full-range offer: ``uniform`` (random ranges and
prices), ``junk0`` (every junk offer at price 0, random ranges) and ``nested`` (wide offers
bracketing cheap narrow ones: the shape that sends the router from its polynomial relaxed search
to the exact C3 search). Prints the median and worst time per shape.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from verisplit.spec.cohort import ModelSpec, Offer, form_cohort


def registry(shape: str, layers: int, count: int, rng: random.Random) -> list[Offer]:
    offers = [Offer("honest", bytes(32), 0, layers, 5, "127.0.0.1:1")]
    for i in range(1, count + 1):
        first = rng.randrange(layers)
        end = rng.randint(first + 1, layers)
        if shape == "uniform":
            price = rng.randint(0, 9)
        elif shape == "junk0":
            price = 0
        else:
            price = rng.choice((0, 1)) if end - first < 3 else rng.randint(3, 9)
        offers.append(Offer(f"junk{i:04d}", i.to_bytes(32, "big"), first, end, price, f"127.0.0.1:{i}"))
    return offers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--offers", type=int, default=200)
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    model = ModelSpec("m", args.layers)
    for shape in ("uniform", "junk0", "nested"):
        times = []
        for seed in range(args.seeds):
            offers = registry(shape, args.layers, args.offers, random.Random(seed))
            t0 = time.perf_counter()
            form_cohort(offers, model)
            times.append(time.perf_counter() - t0)
        print(f"{shape:8s} layers={args.layers} offers={args.offers + 1}: median {statistics.median(times) * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms over {args.seeds} registries")


if __name__ == "__main__":
    main()
