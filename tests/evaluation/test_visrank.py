"""Ranked-result images: which gallery items each protocol shows, with which mark, on a gallery
made by hand; and the images written per protocol."""

import os

import numpy as np
from PIL import Image

from csgn_plugin.evaluation.visrank import (
    EXCLUDED,
    gallery_marks,
    protocol_view,
    write_ranked_lists,
)

# query: pid 1, camera 0, clothes 10. Gallery (pid, camera, clothes):
GALLERY = [
    (1, 0, 10),  # 0: same person, same camera, same clothes
    (1, 1, 10),  # 1: same person, other camera, same clothes
    (1, 2, 11),  # 2: same person, other camera, other clothes
    (2, 1, 10),  # 3: another person (in clothes numbered like the query's)
    (1, 0, 11),  # 4: same person, same camera, other clothes
    (3, 0, 12),  # 5: another person, same camera (never excluded)
]
G_PIDS, G_CAMS, G_CLOTHES = (np.array(column) for column in zip(*GALLERY))
QUERY = (1, 0, 10)
SAME, OTHER, PERSON, X = "same_clothes", "other_clothes", "other_person", EXCLUDED
EXPECTED = {  # by the table in evaluation/ranking.py, worked out by hand
    "general": [X, SAME, OTHER, PERSON, X, PERSON],  # junk: same camera
    "cc": [X, X, OTHER, PERSON, X, PERSON],  # junk: same camera or same clothes
    "sc": [X, SAME, X, PERSON, X, PERSON],  # junk: same camera or other clothes
}
RANKED = np.array([0, 3, 1, 4, 2, 5])  # nearest first


def test_each_gallery_item_gets_its_protocols_mark():
    for mode, expected in EXPECTED.items():
        marks = gallery_marks(mode, QUERY, G_PIDS, G_CAMS, G_CLOTHES)
        assert list(marks) == expected, mode


def test_the_view_shows_the_protocols_ranking_and_counts_what_it_left_out():
    # general: 0 is junk; the first two scored are 3 (another person) and 1 (same clothes)
    assert protocol_view("general", QUERY, RANKED, G_PIDS, G_CAMS, G_CLOTHES, 2) == (
        [(3, PERSON), (1, SAME)],
        1,
    )
    # CC: 0, 1 and 4 are junk; rank 2 is the other-clothes match 2, after 3 excluded items
    assert protocol_view("cc", QUERY, RANKED, G_PIDS, G_CAMS, G_CLOTHES, 2) == (
        [(3, PERSON), (2, OTHER)],
        3,
    )
    assert protocol_view("sc", QUERY, RANKED, G_PIDS, G_CAMS, G_CLOTHES, 3) == (
        [(3, PERSON), (1, SAME), (5, PERSON)],
        3,  # 0 and 4 before 1, 2 before 5
    )
    # pid 2 has one gallery item, in the query's clothes: CC scores nothing for it
    other = (2, 0, 10)
    assert protocol_view("cc", other, RANKED, G_PIDS, G_CAMS, G_CLOTHES, 2) is None
    assert protocol_view("sc", other, RANKED, G_PIDS, G_CAMS, G_CLOTHES, 2) == (
        [(0, PERSON), (3, SAME)],
        0,
    )


def test_one_image_per_scored_query_and_protocol(tmp_path):
    def image(name, colour):
        path = str(tmp_path / name)
        Image.new("RGB", (16, 32), colour).save(path)
        return path

    gallery = [image(f"g{i}.png", (40 * i, 0, 0)) for i in range(len(GALLERY))]
    queries = [image("q1.png", (0, 200, 0)), image("q2.png", (0, 0, 200))]
    distmat = np.empty((2, len(GALLERY)))
    distmat[:, RANKED] = np.arange(len(GALLERY))  # both queries rank the gallery as RANKED
    labels = (np.array([1, 2]), G_PIDS, np.array([0, 0]), G_CAMS, np.array([10, 10]), G_CLOTHES)
    out = tmp_path / "visrank"
    written = write_ranked_lists(
        distmat, queries, gallery, labels, ("general", "cc", "sc"), str(out), 3, (32, 16)
    )
    assert written == {"general": 2, "cc": 1, "sc": 2}  # query 2 has no CC match
    assert sorted(os.listdir(out / "cc")) == ["00000_q1.jpg"]
    with Image.open(out / "general" / "00001_q2.jpg") as drawn:
        assert drawn.height > 32 and drawn.width > 4 * 16  # the query and three matches
