"""Measuring the premise: does a SynthCLIP's image-text space follow the clothes' colours?

On the corpus's held-out images (people and outfits never trained on):

* **zero-shot retrieval**: each image's own caption as a query among all held-out images
  (text -> image) and each image among all captions (image -> text); recall at 1, 5 and 10, with
  chance (k / N) beside. Other images may fit a caption as well as its own (the same outfit seen
  again, a common colour pair), so these recalls are lower bounds of how well captions match;
* **image neighbours**: how often an image's nearest other held-out image (cosine) has the same
  top colour, bottom colour, outfit (another view of it), person (either outfit) or person in
  another outfit, beside chance: whether the image space is organised by clothes or identity;
* **colour probe**: a text query per colour and garment ("a person in a red shirt.", "a person in
  red trousers.") ranks the held-out images; precision at k is the fraction of the k best whose
  garment the pixels name that colour (the corpus's attributes), chance is that colour's share of
  the held-out images. Colours with fewer than k held-out images are reported but left out of the
  macro mean.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np
import torch

from ..data.synth.captions import COLOUR_NAMES
from ..data.synth.corpus import Corpus, ensure_corpus, load_corpus
from ..fileio import atomic_write_text
from ..progress import get_logger
from .towers import SynthCLIPEncoder
from .train import PretrainSettings

#: the colour probe's queries; '{}' is the colour name
QUERIES = {"top": "a person in a {} shirt.", "bottom": "a person in {} trousers."}


def retrieval(
    image_emb: torch.Tensor, text_emb: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> dict:
    """Recall at k of matched pairs (row i of both): text -> image and image -> text."""
    sim = text_emb @ image_emb.T
    n = sim.shape[0]
    truth = sim.diagonal().unsqueeze(1)
    # rank of the true pair: how many candidates score strictly higher (ties count in its favour)
    text_rank = (sim > truth).sum(dim=1)
    image_rank = (sim.T > truth).sum(dim=1)
    result = {"n": n}
    for k in ks:
        result[f"text_to_image_R@{k}"] = round(float((text_rank < k).float().mean()), 4)
        result[f"image_to_text_R@{k}"] = round(float((image_rank < k).float().mean()), 4)
        result[f"chance_R@{k}"] = round(min(k, n) / n, 4)
    return result


def colour_precision(
    image_emb: torch.Tensor, query_emb: torch.Tensor, labels: list, names: tuple, k: int
) -> dict:
    """Precision at k of each query (row j of ``query_emb`` asks for ``names[j]``) against the
    images' ``labels``, with each colour's share of the images (chance) and count."""
    labels_arr = np.array([label if label is not None else "" for label in labels])
    top = torch.topk(query_emb @ image_emb.T, k=min(k, image_emb.shape[0]), dim=1).indices
    per_colour = {}
    for j, name in enumerate(names):
        hits = labels_arr[top[j].numpy()] == name
        count = int((labels_arr == name).sum())
        per_colour[name] = {
            "precision": round(float(hits.mean()), 4),
            "chance": round(count / len(labels_arr), 4),
            "images": count,
        }
    counted = [v for v in per_colour.values() if v["images"] >= k]
    return {
        "k": k,
        "per_colour": per_colour,
        "macro_precision": round(float(np.mean([v["precision"] for v in counted])), 4)
        if counted
        else None,
        "macro_chance": round(float(np.mean([v["chance"] for v in counted])), 4)
        if counted
        else None,
        "colours_in_macro": len(counted),
    }


def neighbours(image_emb: torch.Tensor, keys: dict[str, list]) -> dict:
    """How often an image's nearest other image shares each key (``keys[name][i]``: image i's
    value; ``None`` matches nothing), beside chance: the share of same-key pairs among all
    ordered pairs of different images."""
    sim = image_emb @ image_emb.T
    sim.fill_diagonal_(float("-inf"))
    nearest = sim.argmax(dim=1).numpy()
    n = len(nearest)
    result = {}
    for name, values in keys.items():
        labels = np.array([str(v) if v is not None else f"-{i}" for i, v in enumerate(values)])
        _, counts = np.unique(labels, return_counts=True)
        result[name] = {
            "nearest_shares": round(float(np.mean(labels[nearest] == labels)), 4),
            "chance": round(float((counts * (counts - 1)).sum() / (n * (n - 1))), 4),
        }
    return result


def run_probe(encoder: SynthCLIPEncoder, corpus: Corpus, k: int = 20) -> dict[str, Any]:
    """Retrieval and the colour probe of ``encoder`` on the corpus's held-out images."""
    index = corpus.heldout_index
    if len(index) == 0:
        raise ValueError(f"the corpus '{corpus.path}' holds no held-out images to probe on")
    images = encoder.encode_images(corpus.images[index])
    texts = encoder.encode_texts([corpus.captions[i] for i in index])
    samples = [corpus.samples[i] for i in index]
    keys = {
        "top colour": [s["attributes"]["top_colour"] for s in samples],
        "bottom colour": [s["attributes"]["bottom_colour"] for s in samples],
        "outfit": [(s["person"], s["outfit"]) for s in samples],
        "person": [s["person"] for s in samples],
    }
    near = neighbours(images, keys)
    # a neighbour of the same outfit is of the same person: the rest wear another outfit
    near["person, another outfit"] = {
        k: round(near["person"][k] - near["outfit"][k], 4) for k in ("nearest_shares", "chance")
    }
    result: dict[str, Any] = {
        "retrieval": retrieval(images, texts),
        "image_neighbours": near,
        "colour_probe": {},
    }
    for part, template in QUERIES.items():
        queries = encoder.encode_texts([template.format(name) for name in COLOUR_NAMES])
        labels = [corpus.samples[i]["attributes"][f"{part}_colour"] for i in index]
        result["colour_probe"][part] = {
            "query": template,
            **colour_precision(images, queries, labels, COLOUR_NAMES, k),
        }
    return result


def _cell(value: Optional[float], width: int) -> str:
    return f"{value:>{width}.3f}" if value is not None else f"{'-':>{width}s}"


def format_probe(results: dict[str, dict]) -> str:
    """A readable table of one or more probe results (name -> :func:`run_probe` output)."""
    names = list(results)
    lines = []
    first = results[names[0]]
    k = first["colour_probe"]["top"]["k"]
    header = f"{'':34s}" + "".join(f"{n:>14s}" for n in names) + f"{'chance':>10s}"
    lines += [f"Zero-shot retrieval, held-out images (N = {first['retrieval']['n']})", header]
    for key in ("text_to_image", "image_to_text"):
        for r in (1, 5, 10):
            row = f"  {key.replace('_', ' ')} R@{r}".ljust(34)
            row += "".join(f"{results[n]['retrieval'][f'{key}_R@{r}']:>14.3f}" for n in names)
            lines.append(row + f"{first['retrieval'][f'chance_R@{r}']:>10.3f}")
    lines += ["", "Nearest other held-out image shares the ...", header]
    for key, stats in first["image_neighbours"].items():
        row = f"  {key}".ljust(34)
        row += "".join(
            f"{results[n]['image_neighbours'][key]['nearest_shares']:>14.3f}" for n in names
        )
        lines.append(row + f"{stats['chance']:>10.3f}")
    for part in QUERIES:
        probe = first["colour_probe"][part]
        lines += ["", f"Colour probe, {part}: '{probe['query']}', precision@{k}", header]
        for colour in COLOUR_NAMES:
            stats = probe["per_colour"][colour]
            row = f"  {colour} ({stats['images']} images)".ljust(34)
            row += "".join(
                f"{results[n]['colour_probe'][part]['per_colour'][colour]['precision']:>14.3f}"
                for n in names
            )
            lines.append(row + f"{stats['chance']:>10.3f}")
        row = f"  macro mean ({probe['colours_in_macro']} colours >= {k} images)".ljust(34)
        row += "".join(
            _cell(results[n]["colour_probe"][part]["macro_precision"], 14) for n in names
        )
        lines.append(row + _cell(probe["macro_chance"], 10))
    return "\n".join(lines)


def probe_weights(
    root: str, tower: str, weights: str, settings: PretrainSettings, k: int, out_dir: str
) -> dict:
    """Probe ``weights`` of ``tower`` beside the same architecture with random weights on the
    held-out images of ``settings``' corpus; print the table and write ``probe.json`` and
    ``probe.txt`` into ``out_dir``. Returns {name: :func:`run_probe` result}."""
    corpus = load_corpus(ensure_corpus(root, settings.corpus, settings.corpus_seed))
    torch.manual_seed(0)  # the random-weight reference is the same every time
    results = {}
    for name, path in ((f"synthclip-{tower}", weights), ("random", "")):
        encoder = SynthCLIPEncoder(
            tower,
            path,
            image_size=tuple(corpus.images.shape[1:3]),
            norm_mean=settings.norm_mean,
            norm_std=settings.norm_std,
        )
        results[name] = run_probe(encoder, corpus, k)
    table = format_probe(results)
    get_logger().info(table)
    os.makedirs(out_dir, exist_ok=True)
    record = {"weights": weights, "corpus": corpus.path, "k": k, "results": results}
    atomic_write_text(os.path.join(out_dir, "probe.json"), json.dumps(record, indent=2) + "\n")
    atomic_write_text(os.path.join(out_dir, "probe.txt"), table + "\n")
    get_logger().info(f"written: {os.path.join(out_dir, 'probe.json')} and probe.txt")
    return results
