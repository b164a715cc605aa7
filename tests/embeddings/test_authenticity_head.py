"""The authenticity head library (embeddings/authenticity.py): grouped fitting, calibration, bands, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embeddings.authenticity import HeadOptions, HeadSet, LabelledPhotos, expected_calibration_error, fit_heads

OPTIONS = HeadOptions(c_grid=(0.3, 1.0), cv_repeats=2)


def photos(
    n_groups: int = 12, per_group: int = 6, dim: int = 24, signal: float = 1.5, seed: int = 0, brand: str = "Acme",
    product_signal: dict[str, float] | None = None,
) -> LabelledPhotos:  # fmt: skip
    """Labelled features in photo shoots: each shoot shares an offset (what leaks when shoots straddle folds), the
    label moves one direction by `signal`, half the shoots of each label per product."""
    rng = np.random.default_rng(seed)
    rows, labels, groups, products = [], [], [], []
    direction = np.random.default_rng(1234).normal(size=dim)  # the same world whatever the seed of the shoots
    direction /= np.linalg.norm(direction)
    for g in range(n_groups):
        fake = g % 2 == 1
        product = "runner" if g % 4 < 2 else "boot"
        strength = (product_signal or {}).get(product, signal)
        shoot = rng.normal(scale=0.7, size=dim)
        for _ in range(per_group):
            rows.append(shoot + rng.normal(scale=1.0, size=dim) + (strength if fake else 0.0) * direction)
            labels.append(fake)
            groups.append(f"{brand}-shoot-{g}")
            products.append(product)
    n = len(rows)
    return LabelledPhotos(
        np.array(rows, dtype=np.float32), np.array(labels), tuple(groups), (brand,) * n, tuple(products), "t-v1"
    )


def fit(data: LabelledPhotos, options: HeadOptions = OPTIONS) -> HeadSet:
    return fit_heads(data, options, fingerprint="f" * 64, catalog_revision=7)


def test_a_brand_head_ranks_unseen_shoots_and_its_probabilities_are_calibrated_out_of_fold() -> None:
    heads = fit(photos(signal=4.0))
    head = heads.head_for("Acme")
    assert head is not None and head.brand == "Acme" and heads.head_for("Other") is None
    assert head.cv_roc_auc > 0.8, head.describe()
    assert head.folds == 5 and head.n_authentic == 36 and head.n_counterfeit == 36 and head.n_groups == 12
    fresh = photos(signal=4.0, seed=99)  # other shoots of the same world
    p = np.concatenate([head.probability(fresh.features[i : i + 1], product) for i, product in enumerate(fresh.products)])
    assert ((p > 0) & (p < 1)).all()
    assert p[fresh.is_counterfeit].mean() > p[~fresh.is_counterfeit].mean() + 0.3
    assert expected_calibration_error(p, fresh.is_counterfeit.astype(int)) < 0.2
    assert 0.0 < head.likely_authentic < head.likely_counterfeit <= 1.0


def test_scopes_without_enough_photos_or_shoots_are_skipped_with_the_reason() -> None:
    few = photos(n_groups=4, per_group=2)  # 4 photos of each label
    heads = fit(few)
    assert heads.heads == {}
    assert "too few labelled photos: 4 authentic in 2 shoots, 4 counterfeit in 2 shoots" in heads.skipped["Acme"]
    one_shoot = photos(n_groups=2, per_group=12)  # enough photos, but each label from one shoot: nothing to validate on
    assert "Acme" in fit(one_shoot).skipped


def test_products_with_enough_photos_get_weights_of_their_own_on_top_of_the_brands() -> None:
    # The boot's fakes move the opposite way to the runner's: shared weights alone cannot follow both.
    data = photos(n_groups=16, product_signal={"runner": 3.0, "boot": -3.0})
    head = fit(data).head_for("Acme")
    assert head is not None and head.products == ("boot", "runner")
    assert head.scope("boot") == "Acme/boot" and head.scope("sandal") == "Acme"
    assert head.cv_roc_auc > 0.7, head.describe()  # shared weights alone: about 0.5, the two directions cancel
    fresh = photos(n_groups=16, product_signal={"runner": 3.0, "boot": -3.0}, seed=5)
    for product in ("runner", "boot"):
        rows = np.array([p == product for p in fresh.products])
        p = head.probability(fresh.features[rows], product)
        assert p[fresh.is_counterfeit[rows]].mean() > p[~fresh.is_counterfeit[rows]].mean() + 0.2, product
    # A product with too few photos of a label has no weights of its own: the shared ones score it.
    rows = np.flatnonzero([not (p == "boot" and fake) for p, fake in zip(data.products, data.is_counterfeit, strict=True)])
    thin = data.subset(np.concatenate([rows, np.flatnonzero([p == "boot" for p in data.products])[:2]]))
    thin_head = fit(thin).head_for("Acme")
    assert thin_head is not None and thin_head.products == ()


def test_saved_heads_load_back_identical_and_the_version_names_the_training_set(tmp_path: Path) -> None:
    data = photos()
    heads = fit(data)
    path = tmp_path / "heads" / "x.npz"
    heads.save(path)
    loaded = HeadSet.load(path)
    assert loaded.version == heads.version and loaded.summary() == heads.summary()
    a, b = heads.head_for("Acme"), loaded.head_for("Acme")
    assert a is not None and b is not None and a.products == b.products == ("boot", "runner")
    for product in ("boot", "runner", None):
        assert np.array_equal(a.probability(data.features, product), b.probability(data.features, product))
    assert fit(data).version == heads.version  # same photos, labels and shoots: same version
    flipped = LabelledPhotos(data.features, ~data.is_counterfeit, data.groups, data.brands, data.products, data.layout)
    assert fit(flipped).version != heads.version


def test_a_file_that_is_not_a_head_set_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable head set"):
        HeadSet.load(bad)
    np.savez(tmp_path / "other.npz", coef=np.zeros((0, 0)), meta=np.frombuffer(b'{"format": "x"}', dtype=np.uint8))
    with pytest.raises(ValueError, match="not in format"):
        HeadSet.load(tmp_path / "other.npz")


def test_labelled_photos_travel_through_a_checkpoint_payload_and_refuse_another_layout() -> None:
    data = photos(n_groups=2, per_group=3)
    back = LabelledPhotos.from_payload(data.to_payload())
    assert back.groups == data.groups and back.products == data.products and back.layout == data.layout
    assert np.allclose(back.features, data.features, atol=1e-2)  # float16 on the way
    assert np.array_equal(back.is_counterfeit, data.is_counterfeit)
    other = LabelledPhotos(data.features, data.is_counterfeit, data.groups, data.brands, data.products, "t-v2")
    with pytest.raises(ValueError, match="cannot join"):
        _ = data + other
