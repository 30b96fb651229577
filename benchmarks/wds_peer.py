"""The peer a user compares clipscale's stream with: open_clip's own training data path.

Written as open_clip's `training/data.py` (`get_wds_dataset`) writes it: a `webdataset`
pipeline over the shard URLs, split by DataLoader worker, PIL decode, open_clip's train
transform (random resized crop, CLIP mean/std) and tokenizer, batched in the workers and fed
by `torch.utils.data.DataLoader(num_workers=<cores>)`. Same tars, same outputs as clipscale's
stream: float NCHW batches normalised with CLIP's mean/std, and token batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def shard_urls(shards: tuple[str, ...], endpoint: str) -> list[str]:
    """s3://bucket/key -> http(s)://endpoint/bucket/key, which webdataset reads with curl.
    (Against AWS an open_clip user writes `pipe:aws s3 cp s3://... -`; moto serves plain GETs.)"""
    out = []
    for uri in shards:
        if not uri.startswith("s3://"):
            out.append(uri)  # a local path: webdataset opens it directly
            continue
        out.append(f"{endpoint.rstrip('/')}/{uri[len('s3://'):]}")
    return out


def peer_loader(urls: list[str], size: int, context_length: int, batch: int, workers: int):
    """open_clip's webdataset + DataLoader pipeline (train mode, no shuffle: clipscale's stream runs
    with shuffle off in the benchmark too)."""
    import open_clip
    import webdataset as wds

    preprocess = open_clip.image_transform(size, is_train=True)  # RandomResizedCrop((0.9, 1)) + Normalize
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=context_length)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=wds.warn_and_continue),
        wds.decode("pilrgb", handler=wds.warn_and_continue),
        wds.rename(image="jpg;png;jpeg;webp", text="txt"),
        wds.map_dict(image=preprocess, text=lambda text: tokenizer(text)[0]),
        wds.to_tuple("image", "text"),
        wds.batched(batch, partial=False),
    )
    return torch.utils.data.DataLoader(pipeline, batch_size=None, shuffle=False, num_workers=workers,
                                       persistent_workers=False)


def peer(urls: list[str], size: int, context_length: int, batch: int, workers: int) -> Iterator[int]:
    """Yields batch sizes, like bench_data's other sides."""
    for images, tokens in peer_loader(urls, size, context_length, batch, workers):
        assert images.dtype == torch.float32 and images.shape[1:] == (3, size, size), images.shape
        assert tokens.shape == (images.shape[0], context_length)
        yield images.shape[0]
