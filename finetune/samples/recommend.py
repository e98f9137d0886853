"""Write the demo storefront: ``data/samples/recommend/catalogue.jsonl`` (a few hundred products) and
``events.jsonl`` (a synthetic month of shoppers). Deterministic: the same files on every run.

    python -m finetune.samples.recommend          # rewrites both files (or: domainllm recommend sample-data)

Shoppers have one or two favourite categories; they browse (view, click), sometimes add to cart and
buy, rate some purchases, and follow the pairings a real shop sees (a grinder after coffee beans).
Nothing here comes from a public data set.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from core.config import PROJECT_ROOT

OUT_DIR = PROJECT_ROOT / "data" / "samples" / "recommend"
SEED = 20260

# category -> (brands, [(product, base price, tags, description template)])
CATEGORIES: dict[str, tuple[list[str], list[tuple[str, float, list[str], str]]]] = {
    "coffee": (
        ["Northbay Roasters", "Casa Molina", "Ridgeline", "Kettle & Co"],
        [
            (
                "{adj} Espresso Beans 1kg",
                24,
                ["beans", "espresso"],
                "Whole beans roasted {roast} for a syrupy espresso with notes of {note}.",
            ),
            (
                "{adj} Filter Coffee 500g",
                14,
                ["beans", "filter"],
                "A {roast} roast for pour-over and drip, tasting of {note}.",
            ),
            (
                "Burr Coffee Grinder {model}",
                89,
                ["grinder", "equipment"],
                "Conical steel burrs with {n} grind settings, from espresso fine to French press coarse.",
            ),
            (
                "Glass Pour-Over Dripper {model}",
                29,
                ["pour-over", "equipment"],
                "Heat-resistant borosilicate dripper with a spiral rib for an even extraction.",
            ),
            (
                "French Press {size}",
                35,
                ["french press", "equipment"],
                "Double-walled stainless press that keeps coffee hot for an hour; {size} capacity.",
            ),
            (
                "Milk Frother {model}",
                45,
                ["milk", "equipment"],
                "Makes silky microfoam for lattes in ninety seconds; dishwasher-safe jug.",
            ),
            (
                "Paper Filters Size 02 (100)",
                6,
                ["filters", "pour-over"],
                "Unbleached paper filters that fit most cone drippers.",
            ),
        ],
    ),
    "tea": (
        ["Misty Peak", "Tealeaf House", "Old Harbour", "Jade Garden"],
        [
            (
                "{adj} Sencha Green Tea 100g",
                12,
                ["green tea", "loose leaf"],
                "Steamed Japanese green tea with a grassy, {note} finish.",
            ),
            (
                "Assam Breakfast Tea 250g",
                9,
                ["black tea", "loose leaf"],
                "Malty, full-bodied black tea that takes milk well.",
            ),
            (
                "Chamomile & Lavender Infusion",
                8,
                ["herbal", "caffeine-free"],
                "A calming caffeine-free blend for the evening.",
            ),
            (
                "Cast Iron Teapot {size}",
                42,
                ["teapot", "equipment"],
                "Enamelled cast iron teapot with a removable steel infuser; {size}.",
            ),
            (
                "Glass Tea Infuser Mug",
                19,
                ["infuser", "equipment"],
                "A tall mug with a glass basket for loose-leaf tea at the desk.",
            ),
        ],
    ),
    "kitchen": (
        ["Hearth & Steel", "Kobe Forge", "Maison Cuisine", "Oakline"],
        [
            (
                "{adj} Chef's Knife 20cm",
                79,
                ["knife", "cutting"],
                "Hand-sharpened {steel} steel blade with a full tang and a balanced walnut handle.",
            ),
            (
                "End-Grain Cutting Board {size}",
                55,
                ["board", "cutting"],
                "Thick end-grain {wood} board that is kind to knife edges.",
            ),
            (
                "Pre-Seasoned Cast Iron Skillet 26cm",
                39,
                ["cast iron", "pan"],
                "Heavy skillet that sears, bakes and goes from hob to oven.",
            ),
            (
                "Stainless Saucepan Set (3)",
                99,
                ["saucepan", "pan"],
                "Tri-ply saucepans with glass lids for every hob, induction included.",
            ),
            (
                "Digital Kitchen Scale {model}",
                22,
                ["scale", "baking"],
                "Weighs to the gram up to 5 kg, with a tare button and a slim glass top.",
            ),
            (
                "Whetstone 1000/6000",
                34,
                ["sharpening", "knife"],
                "Two-sided water stone to keep a chef's knife razor sharp.",
            ),
            ("Linen Apron", 25, ["apron", "textiles"], "Stonewashed linen apron with a deep front pocket."),
        ],
    ),
    "running": (
        ["Stride Labs", "Peakform", "Aerolite", "Tempo Athletics"],
        [
            (
                "{adj} Trail Running Shoes",
                129,
                ["shoes", "trail"],
                "Grippy lugged outsole and a rock plate for technical trails; {drop} drop.",
            ),
            (
                "{adj} Road Running Shoes",
                119,
                ["shoes", "road"],
                "Responsive foam midsole for tempo runs and long Sunday miles; {drop} drop.",
            ),
            (
                "Merino Running Socks (3 pairs)",
                24,
                ["socks", "merino"],
                "Cushioned merino socks that stay dry and do not rub.",
            ),
            (
                "Packable Running Jacket",
                89,
                ["jacket", "rain"],
                "Windproof, showerproof shell that packs into its own pocket.",
            ),
            (
                "GPS Running Watch {model}",
                199,
                ["watch", "gps"],
                "Tracks pace, distance and heart rate, with {n} days of battery.",
            ),
            (
                "Hydration Vest 5L",
                69,
                ["hydration", "trail"],
                "Bounce-free vest with two soft flasks for long trail runs.",
            ),
            (
                "Reflective Running Cap",
                18,
                ["cap", "visibility"],
                "Lightweight cap with reflective trim for early-morning runs.",
            ),
        ],
    ),
    "outdoor": (
        ["Summit Gear", "Northwind", "Basecamp", "Fernwood"],
        [
            (
                "{adj} Two-Person Tent",
                249,
                ["tent", "camping"],
                "Freestanding tent under 2 kg with two doors and porches.",
            ),
            (
                "Down Sleeping Bag -5C",
                179,
                ["sleeping bag", "camping"],
                "Responsibly sourced down, comfortable to minus five degrees.",
            ),
            (
                "Self-Inflating Sleeping Mat",
                59,
                ["mat", "camping"],
                "Open the valve and it fills itself; packs to the size of a bottle.",
            ),
            ("Headtorch 400 Lumens", 35, ["headtorch", "light"], "Rechargeable headtorch with a red night mode."),
            (
                "Insulated Water Bottle 750ml",
                27,
                ["bottle", "hydration"],
                "Keeps drinks cold for a day or hot for twelve hours.",
            ),
            ("Trekking Poles (pair)", 65, ["poles", "hiking"], "Carbon poles with cork grips and flick locks."),
        ],
    ),
    "books": (
        ["Lantern Press", "Harbour Books", "Quill & Ink", "Blue Door"],
        [
            (
                "The {noun} of {place}: A Mystery",
                12,
                ["fiction", "mystery"],
                "A detective returns to {place} and finds the past waiting for her.",
            ),
            (
                "Beyond the {noun}: A Science Fiction Novel",
                14,
                ["fiction", "science fiction"],
                "A crew wakes a century early, light-years from {place}.",
            ),
            (
                "Salt, Fire, Time: A Cookbook",
                28,
                ["cookbook", "food"],
                "Slow-cooked recipes from the coast of {place}.",
            ),
            (
                "Walking {place}: A Trail Guide",
                18,
                ["travel", "hiking"],
                "Thirty day walks with maps and where to stop for tea.",
            ),
            ("The Coffee Atlas", 30, ["coffee", "reference"], "Origins, processing and brewing, farm by farm."),
        ],
    ),
    "garden": (
        ["Greenthumb", "Bramble & Rose", "Potting Shed", "Meadowlark"],
        [
            (
                "Expanding Garden Hose 30m",
                35,
                ["hose", "watering"],
                "Light hose that shrinks back when empty, with a seven-pattern spray gun.",
            ),
            (
                "Bypass Pruning Shears",
                28,
                ["pruning", "tools"],
                "Carbon steel blades that cut stems cleanly up to 20 mm.",
            ),
            (
                "{adj} Wildflower Seed Mix",
                7,
                ["seeds", "wildflowers"],
                "A pollinator-friendly mix of {n} native flowers.",
            ),
            ("Galvanised Watering Can 9L", 32, ["watering", "can"], "Classic long-spout can with a brass rose."),
            ("Leather Garden Gloves", 19, ["gloves", "tools"], "Thorn-proof goatskin gloves with breathable backs."),
            (
                "Raised Bed Kit 120cm",
                89,
                ["raised bed", "growing"],
                "Untreated larch raised bed that bolts together in ten minutes.",
            ),
        ],
    ),
    "home": (
        ["Loom & Lane", "Stillwater Home", "Birch House", "Candlewick"],
        [
            (
                "{adj} Soy Candle",
                22,
                ["candle", "fragrance"],
                "Hand-poured soy wax with notes of {note}; burns for 45 hours.",
            ),
            ("Chunky Knit Throw", 65, ["throw", "textiles"], "Heavy cotton throw for the sofa on cold evenings."),
            ("Linen Cushion Cover 45cm", 24, ["cushion", "textiles"], "Washed linen cover with a hidden zip."),
            (
                "Stoneware Mug Set (4)",
                36,
                ["mugs", "tableware"],
                "Reactive-glaze stoneware mugs, each one slightly different.",
            ),
            (
                "Reed Diffuser 200ml",
                29,
                ["diffuser", "fragrance"],
                "Slow-release fragrance of {note} for three months.",
            ),
        ],
    ),
}
ADJECTIVES = [
    "Classic",
    "Signature",
    "Everyday",
    "Heritage",
    "Limited Edition",
    "Organic",
    "Pro",
    "Lightweight",
    "Deluxe",
]
NOTES = ["dark chocolate", "cherry", "toasted hazelnut", "citrus", "jasmine", "cedar", "vanilla", "sea salt", "fig"]
ROASTS = ["light", "medium", "dark", "medium-dark"]
PLACES = ["Port Ellis", "Kestrel Bay", "the Northern Fells", "Lisbon", "Kyoto", "the Cairngorms", "Valparaiso"]
NOUNS = ["Lighthouse", "Silent Orchard", "Glass Tide", "Winter Signal", "Last Harbour", "Hollow Stars"]
# people who buy the first often come for the second soon after
PAIRINGS = {"beans": "grinder", "grinder": "filters", "knife": "sharpening", "shoes": "socks", "tent": "mat",
            "teapot": "loose leaf", "hose": "watering", "espresso": "milk"}  # fmt: skip


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        adj=rng.choice(ADJECTIVES),
        note=rng.choice(NOTES),
        roast=rng.choice(ROASTS),
        model=rng.choice(["S", "X2", "Pro", "Mini", "3", "Plus"]),
        size=rng.choice(["0.6L", "1L", "Large", "Small", "1.2L"]),
        n=rng.choice([12, 18, 24, 31, 40]),
        drop=rng.choice(["4 mm", "6 mm", "8 mm", "10 mm"]),
        steel=rng.choice(["VG-10", "high-carbon", "Damascus"]),
        wood=rng.choice(["walnut", "maple", "acacia"]),
        place=rng.choice(PLACES),
        noun=rng.choice(NOUNS),
    )


def build_catalogue(rng: random.Random, per_product: int = 10) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    seen: set[str] = set()
    for category, (brands, products) in CATEGORIES.items():
        for p_index, (title_t, base, tags, desc_t) in enumerate(products):
            for v in range(per_product):
                brand = brands[v % len(brands)]
                title = f"{brand} {_fill(title_t, rng)}"
                if title in seen:
                    continue
                seen.add(title)
                price = round(base * rng.uniform(0.75, 1.4), 0) - 0.01
                items.append(
                    {
                        "id": f"{category[:3]}-{p_index:02d}{v:02d}",
                        "title": title,
                        "description": _fill(desc_t, rng),
                        "category": category,
                        "tags": tags,
                        "price": price,
                        "in_stock": rng.random() > 0.06,
                        "brand": brand,
                    }
                )
    return items


def build_events(items: list[dict[str, object]], rng: random.Random, users: int = 240, start: float = 1_767_225_600.0):
    """Sessions over 30 days from ``start`` (2026-01-01 UTC)."""
    by_cat: dict[str, list[dict[str, object]]] = {}
    by_tag: dict[str, list[dict[str, object]]] = {}
    for it in items:
        by_cat.setdefault(str(it["category"]), []).append(it)
        for tag in it["tags"]:  # type: ignore[attr-defined]
            by_tag.setdefault(tag, []).append(it)
    # a few best-sellers per category make popularity meaningful
    favourites = {c: rng.sample(v, min(4, len(v))) for c, v in by_cat.items()}
    events: list[dict[str, object]] = []
    cats = sorted(by_cat)
    for u in range(users):
        user = f"u{u:04d}"
        liked = rng.sample(cats, rng.choice([1, 2, 2, 3]))
        t = start + rng.uniform(0, 20) * 86400
        for _ in range(rng.randint(1, 6)):  # sessions
            category = rng.choice(liked)
            pool = favourites[category] + by_cat[category]
            item = rng.choice(pool)
            for _step in range(rng.randint(2, 6)):
                events.append({"user_id": user, "item_id": item["id"], "type": "view", "ts": round(t)})
                t += rng.uniform(20, 240)
                if rng.random() < 0.45:
                    events.append({"user_id": user, "item_id": item["id"], "type": "click", "ts": round(t)})
                    t += rng.uniform(10, 120)
                    if rng.random() < 0.35:
                        events.append({"user_id": user, "item_id": item["id"], "type": "cart", "ts": round(t)})
                        t += rng.uniform(10, 60)
                        if rng.random() < 0.6:
                            events.append({"user_id": user, "item_id": item["id"], "type": "purchase", "ts": round(t)})
                            if rng.random() < 0.5:
                                value = rng.choice([5, 5, 4, 4, 4, 3, 2])
                                events.append(
                                    {
                                        "user_id": user,
                                        "item_id": item["id"],
                                        "type": "rating",
                                        "value": value,
                                        "ts": round(t + 86400 * 3),
                                    }
                                )
                # next item: a pairing, the same category, or a jump to another liked category
                pair = next((PAIRINGS[tag] for tag in item["tags"] if tag in PAIRINGS), None)  # type: ignore[attr-defined]
                if pair and by_tag.get(pair) and rng.random() < 0.5:
                    item = rng.choice(by_tag[pair])
                elif rng.random() < 0.8:
                    item = rng.choice(favourites[category] + by_cat[category])
                else:
                    item = rng.choice(by_cat[rng.choice(liked)])
            t += rng.uniform(1, 4) * 86400
    events.sort(key=lambda e: (e["ts"], e["user_id"]))
    return events


def main(out_dir: Path = OUT_DIR) -> tuple[Path, Path]:
    rng = random.Random(SEED)
    items = build_catalogue(rng)
    events = build_events(items, rng)
    out_dir.mkdir(parents=True, exist_ok=True)
    cat_path, ev_path = out_dir / "catalogue.jsonl", out_dir / "events.jsonl"
    cat_path.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
    ev_path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return cat_path, ev_path


if __name__ == "__main__":
    c, e = main()
    print(f"wrote {c} ({sum(1 for _ in c.open())} items) and {e} ({sum(1 for _ in e.open())} events)")
