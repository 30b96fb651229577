"""Data mixtures (`data.sources`): every micro-batch draws from several corpora by weight.

Each source is its own `BatchStream` (its own shards, shard order and epochs), so a source
repeats on its own schedule, as in data-constrained studies (Muennighoff et al. 2023). How many
of micro-batch k's samples come from each source is a multinomial draw keyed on (seed, rank, k):
the proportions hold in expectation and the draw is the same after a restart, so the position
(k, each source's own position, samples taken from each) names exactly where to resume.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from clipscale import names
from clipscale.data.pipeline import BatchStream, DataPosition, SkipCounter, StreamSpec, shard_rows

MIX_STREAM = 0x6D6978  # the RNG stream of the mixing draws, apart from shard and row orders


def mix_counts(seed: int, rank: int, index: int, n: int, weights: tuple[float, ...]) -> np.ndarray:
    """How many of micro-batch `index`'s `n` samples each source gives."""
    p = np.asarray(weights, dtype=float)
    return np.random.default_rng([seed, MIX_STREAM, rank, index]).multinomial(n, p / p.sum())


@dataclass
class MixPosition:
    """A mixture stream's place: micro-batches drawn on this rank, each source's own position,
    and the good samples taken from each so far (for per-source metrics across restarts)."""

    batches: int = 0
    sources: dict[str, DataPosition] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"batches": self.batches, "sources": {k: v.to_dict() for k, v in self.sources.items()},
                "seen": dict(self.seen)}

    @classmethod
    def from_dict(cls, d: dict) -> MixPosition:
        return cls(d["batches"], {k: DataPosition(**v) for k, v in d["sources"].items()}, dict(d["seen"]))


def position_from_dict(d: dict) -> DataPosition | MixPosition:
    """A checkpointed position of either stream kind."""
    return MixPosition.from_dict(d) if "sources" in d else DataPosition(**d)


def source_spec(spec: StreamSpec, index: int) -> StreamSpec:
    """Source `index`'s own stream: its shards, and a seed of its own so sources shuffle independently."""
    source = spec.sources[index]
    seed = int(np.random.SeedSequence([spec.seed, index]).generate_state(1)[0])
    return dataclasses.replace(spec, shards=source.shards, sources=(), seed=seed)


class MixtureStream:
    """Fixed-size micro-batches drawn from `spec.sources` by weight; the same interface as BatchStream."""

    def __init__(self, spec: StreamSpec, micro_batch: int, rank: int = 0, world: int = 1,
                 position: MixPosition | None = None, prefetch_batches: int = 2):
        position = position or MixPosition()
        self.spec, self.micro_batch, self.rank, self.world = spec, micro_batch, rank, world
        self.batches = position.batches
        self.seen = {s.name: position.seen.get(s.name, 0) for s in spec.sources}
        self.skipped = SkipCounter()  # shared: the bad-data threshold is the stream's, over every source
        self.streams: dict[str, BatchStream] = {}
        for i, s in enumerate(spec.sources):
            stream = BatchStream(source_spec(spec, i), micro_batch, rank, world, position.sources.get(s.name),
                                 prefetch_batches)
            stream.skipped = self.skipped
            self.streams[s.name] = stream

    @property
    def position(self) -> MixPosition:
        return MixPosition(self.batches, {k: s.position for k, s in self.streams.items()}, dict(self.seen))

    def close(self) -> None:
        """Stop every source's Ray Data execution (BatchStream.close)."""
        for stream in self.streams.values():
            stream.close()

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        weights = tuple(s.weight for s in self.spec.sources)
        while True:
            counts = mix_counts(self.spec.seed, self.rank, self.batches, self.micro_batch, weights)
            parts = []
            for source, n in zip(self.spec.sources, counts):
                if n:
                    parts.append(self.streams[source.name].take(int(n)))
                    self.seen[source.name] += int(n)
            self.batches += 1
            yield np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def open_stream(spec: StreamSpec, micro_batch: int, rank: int = 0, world: int = 1,
                position: DataPosition | MixPosition | None = None) -> BatchStream | MixtureStream:
    if spec.sources:
        return MixtureStream(spec, micro_batch, rank, world, position)
    return BatchStream(spec, micro_batch, rank, world, position)


def rank_counts(stream: BatchStream | MixtureStream, samples_this_rank: int) -> list[float]:
    """This rank's (seen, unique, rows) per source, flat and in the spec's source order, ready to
    be summed over ranks. Unique samples: a source's rows are read without repetition until
    its epoch ends, so a rank has trained on min(seen, rows) distinct ones."""
    if isinstance(stream, MixtureStream):
        pairs = [(float(stream.seen[s.name]), shard_rows(source_spec(stream.spec, i), stream.rank, stream.world))
                 for i, s in enumerate(stream.spec.sources)]
    else:
        pairs = [(float(samples_this_rank), shard_rows(stream.spec, stream.rank, stream.world))]
    return [v for seen, rows in pairs for v in (seen, min(seen, rows), rows)]


def data_metrics(spec: StreamSpec, totals: list[float]) -> dict[str, float]:
    """Metrics from `rank_counts` summed over ranks. Without a manifest the corpus size is unknown
    (NaN) and only per-source samples are reported."""
    triples = [totals[i:i + 3] for i in range(0, len(totals), 3)]
    out: dict[str, float] = {}
    for source, (seen, _, rows) in zip(spec.sources, triples):
        out[names.data_source(source.name, "samples")] = seen
        if rows == rows and rows > 0:
            out[names.data_source(source.name, "epochs")] = seen / rows
    seen, unique, rows = (sum(t[j] for t in triples) for j in range(3))
    if rows == rows and rows > 0:
        out[names.DATA_UNIQUE] = unique
        out[names.DATA_EPOCHS] = seen / rows
    return out


__all__ = ["MixPosition", "MixtureStream", "data_metrics", "mix_counts", "open_stream", "position_from_dict",
           "rank_counts", "source_spec"]
