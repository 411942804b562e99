"""MIMIC-CXR-style free-text reports (docs/data.md §3.1) describing a latent :class:`alta.demo.findings.State`.

``mimic_report(state, prior, views, rng) -> (text, negated)``: "FINAL REPORT" centred, EXAMINATION, INDICATION,
TECHNIQUE, COMPARISON, FINDINGS, IMPRESSION; lines <= 79 characters each starting with one space; ``___`` for PHI.
A few percent of reports carry real-world variation: header typos, ``FINDINGS AND IMPRESSION:``, addenda at the
top separated by a line of underscores, headerless paragraphs, title-like empty headers ("CHEST, PA AND LATERAL:").
``negated`` is the set of CheXpert labels the report explicitly rules out (for the chexpert table).

``impression_text(state, rng)`` is a CheXpert-style numbered, lower-case impression for the benchmark CSVs, and
``TEXT_QUERIES`` the expert-like ConVIRT text queries (5 per class).
"""

from __future__ import annotations

import textwrap

import numpy as np

from alta.demo.findings import State

SIZE_WORD = {1: "small", 2: "moderate", 3: "large"}
PTX_WORD = {1: "small", 2: "large"}
EDEMA_WORD = {1: "mild", 2: "moderate"}
LOBE_WORD = {"RUL": "right upper lobe", "RML": "right middle lobe", "RLL": "right lower lobe",
             "LUL": "left upper lobe", "LLL": "left lower lobe"}
DEVICE_WORD = {"ett": "endotracheal tube", "central_line": "right internal jugular central venous catheter",
               "ng_tube": "nasogastric tube", "pacemaker": "left chest wall pacemaker"}
DEVICE_POS = {"ett": "terminates approximately 4 cm above the carina",
              "central_line": "terminates in the mid superior vena cava",
              "ng_tube": "courses below the diaphragm with the tip in the stomach",
              "pacemaker": "with a lead terminating in the right ventricle"}

TEXT_QUERIES = {
    "Atelectasis": ["Linear opacity at the lung base consistent with atelectasis.",
                    "Bibasilar subsegmental atelectasis.", "Mild left basilar atelectasis.",
                    "Plate-like atelectasis in the right lower lung.", "Streaky basal opacities likely atelectasis."],
    "Cardiomegaly": ["The heart is enlarged.", "Moderate cardiomegaly.", "Enlarged cardiac silhouette.",
                     "Stable cardiomegaly without pulmonary edema.", "Cardiac size is markedly enlarged."],
    "Edema": ["Mild pulmonary edema.", "Bilateral perihilar haziness consistent with pulmonary edema.",
              "Moderate interstitial pulmonary edema.", "Findings consistent with pulmonary vascular congestion and edema.",
              "Diffuse bilateral hazy opacities compatible with edema."],
    "Fracture": ["Healing left rib fracture.", "There is a displaced rib fracture.",
                 "Old right rib fracture with callus formation.", "Rib fracture is seen laterally.",
                 "Nondisplaced fracture of a lateral rib."],
    "No Finding": ["No acute cardiopulmonary process.", "The lungs are clear.", "Normal chest radiograph.",
                   "No focal consolidation, effusion, or pneumothorax.", "Heart size is normal and the lungs are clear."],
    "Pleural Effusion": ["Small left pleural effusion.", "Large right pleural effusion.",
                         "Bilateral pleural effusions.", "Blunting of the costophrenic angle from effusion.",
                         "Moderate pleural effusion with basilar opacity."],
    "Pneumonia": ["Right lower lobe pneumonia.", "Focal consolidation concerning for pneumonia.",
                  "Patchy opacity in the left upper lobe compatible with pneumonia.",
                  "Airspace opacity consistent with infection.", "Findings suggestive of multifocal pneumonia."],
    "Pneumothorax": ["Small right apical pneumothorax.", "Large left pneumothorax.",
                     "There is a pneumothorax without tension.", "Apical pneumothorax is present.",
                     "Pleural line with absent lung markings compatible with pneumothorax."],
}


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _side_phrase(left: int, right: int) -> str:
    if left and right:
        return "bilateral"
    return "left" if left else "right"


def _finding_sentences(st: State, prior: State | None, rng: np.random.Generator) -> tuple[list[str], list[str], set]:
    """Findings sentences, impression sentences, and the labels explicitly negated."""
    find, imp, neg = [], [], set()
    cmp_ = prior is not None
    # Heart.
    if st.cardiomegaly:
        if cmp_ and prior.cardiomegaly:
            find.append(_pick(rng, ["The heart remains enlarged.", "Cardiomegaly is unchanged.",
                                    "Stable cardiomegaly."]))
        else:
            find.append(_pick(rng, ["The heart is enlarged.", "There is moderate cardiomegaly.",
                                    "Cardiac silhouette is enlarged."]) + (" This is new." if cmp_ else ""))
            imp.append("New cardiomegaly." if cmp_ else "Cardiomegaly.")
    else:
        find.append(_pick(rng, ["Heart size is normal.", "The cardiac silhouette is within normal limits.",
                                "Normal heart size."]))
        neg.add("Cardiomegaly")
    # Effusions, per side, with change versus prior.
    for side in ("left", "right"):
        cur = st.eff_left if side == "left" else st.eff_right
        old = (prior.eff_left if side == "left" else prior.eff_right) if cmp_ else 0
        if cur and cmp_ and old:
            if cur > old:
                s = f"The {side} pleural effusion has increased, now {SIZE_WORD[cur]}."
                imp.append(f"Increased {side} pleural effusion.")
            elif cur < old:
                s = f"The {side} pleural effusion has decreased, now {SIZE_WORD[cur]}."
                imp.append(f"Decreased {side} pleural effusion.")
            else:
                s = f"{SIZE_WORD[cur].capitalize()} {side} pleural effusion is unchanged."
            find.append(s)
        elif cur:
            new = " new" if cmp_ else ""
            find.append(_pick(rng, [f"There is a{'n' if cur == 1 and not new else ''}{new} {SIZE_WORD[cur]} {side} pleural effusion.",
                                    f"{SIZE_WORD[cur].capitalize()}{new} {side} pleural effusion."]).replace("an new", "a new")
                        .replace("an moderate", "a moderate").replace("an large", "a large"))
            imp.append(f"{'New ' if cmp_ else ''}{SIZE_WORD[cur]} {side} pleural effusion.".capitalize())
        elif old:
            find.append(f"The previously seen {side} pleural effusion has resolved.")
            imp.append(f"Resolved {side} pleural effusion.")
    if not (st.eff_left or st.eff_right):
        if rng.random() < 0.8:
            find.append(_pick(rng, ["No pleural effusion.", "There is no pleural effusion.",
                                    "No large pleural effusion is seen."]))
            neg.add("Pleural Effusion")
    # Consolidation.
    if st.consolidation:
        lobe = LOBE_WORD[st.consolidation]
        if cmp_ and prior.consolidation == st.consolidation:
            find.append(f"Persistent {lobe} consolidation.")
            imp.append(f"Persistent {lobe} pneumonia.")
        else:
            find.append(_pick(rng, [f"Patchy opacity in the {lobe} concerning for pneumonia.",
                                    f"{'New ' if cmp_ else ''}focal consolidation in the {lobe}.".capitalize(),
                                    f"There is airspace consolidation in the {lobe}."]))
            imp.append(f"{'New ' if cmp_ else ''}{lobe} pneumonia.".capitalize())
    elif cmp_ and prior.consolidation:
        find.append(f"The {LOBE_WORD[prior.consolidation]} opacity has resolved.")
        imp.append("Resolved pneumonia.")
    else:
        find.append(_pick(rng, ["No focal consolidation.", "The lungs are clear without focal consolidation.",
                                "There is no focal airspace consolidation."]))
        neg.update({"Consolidation", "Pneumonia"})
    # Edema.
    if st.edema:
        w = EDEMA_WORD[st.edema]
        if cmp_ and prior.edema:
            ch = "worsened" if st.edema > prior.edema else "improved" if st.edema < prior.edema else "unchanged"
            find.append(f"Pulmonary edema has {ch}, now {w}." if ch != "unchanged" else f"{w.capitalize()} pulmonary edema, unchanged.")
            imp.append(f"{ch.capitalize()} {w} pulmonary edema.")
        else:
            find.append(f"{'New ' if cmp_ else ''}{w} bilateral perihilar haziness consistent with pulmonary edema."
                        .capitalize())
            imp.append(f"{'New ' if cmp_ else ''}{w} pulmonary edema.".capitalize())
    elif cmp_ and prior.edema:
        find.append("Pulmonary edema has resolved.")
        imp.append("Resolved pulmonary edema.")
    elif rng.random() < 0.6:
        find.append("No pulmonary edema.")
        neg.add("Edema")
    # Atelectasis.
    if st.atelectasis:
        where = "bibasilar" if st.atelectasis == "bilateral" else f"{st.atelectasis} basilar"
        find.append(_pick(rng, [f"Linear {where} opacity consistent with atelectasis.",
                                f"There is {where} subsegmental atelectasis.",
                                f"Plate-like {where} atelectasis{' is new' if cmp_ and not prior.atelectasis else ''}."]))
        imp.append(f"{where.capitalize()} atelectasis.")
    elif cmp_ and prior.atelectasis:
        find.append("Previously seen basilar atelectasis has resolved.")
    # Pneumothorax.
    if st.ptx_side:
        w = PTX_WORD[st.ptx_size]
        if cmp_ and prior.ptx_side == st.ptx_side:
            ch = "increased" if st.ptx_size > prior.ptx_size else "decreased" if st.ptx_size < prior.ptx_size else "unchanged"
            find.append(f"The {w} {st.ptx_side} pneumothorax is {ch}." if ch == "unchanged"
                        else f"The {st.ptx_side} pneumothorax has {ch} in size, now {w}.")
            imp.append(f"{ch.capitalize()} {st.ptx_side} pneumothorax.")
        else:
            loc = "apical" if st.ptx_size == 1 else "apical and lateral"
            find.append(f"{'New ' if cmp_ else ''}{w} {st.ptx_side} {loc} pneumothorax.".capitalize())
            imp.append(f"{'New ' if cmp_ else ''}{st.ptx_side} pneumothorax.".capitalize())
    elif cmp_ and prior.ptx_side:
        find.append(f"The {prior.ptx_side} pneumothorax has resolved.")
        imp.append(f"Resolved {prior.ptx_side} pneumothorax.")
    else:
        find.append(_pick(rng, ["No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is seen."]))
        neg.add("Pneumothorax")
    if st.fracture:
        find.append(f"Healing {st.fracture} lateral rib fracture with callus.")
    # Devices.
    old_devs = set(prior.device_set) if cmp_ else set()
    for d in st.device_set:
        if d in old_devs:
            find.append(f"The {DEVICE_WORD[d]} is unchanged in position.")
        else:
            find.append(f"{'Interval placement of ' if cmp_ else ''}{'an' if d == 'ett' and not cmp_ else 'a'} "
                        f"{DEVICE_WORD[d]} which {DEVICE_POS[d]}.".strip().capitalize())
            imp.append(f"{DEVICE_WORD[d].capitalize()} {DEVICE_POS[d]}.")
    for d in sorted(old_devs - set(st.device_set)):
        find.append(f"Interval removal of the {DEVICE_WORD[d]}.")
    if not imp:
        imp.append(_pick(rng, ["No acute cardiopulmonary process.", "No acute intrathoracic abnormality.",
                               "No evidence of acute disease."]) + (" No change from prior." if cmp_ else ""))
    return find, imp, neg


def _wrap(text: str) -> list[str]:
    return [" " + ln for ln in textwrap.wrap(text, width=78)] or [" "]


def _header(name: str, rng: np.random.Generator, typo_rate: float) -> str:
    typos = {"FINDINGS": "FINDNGS", "IMPRESSION": "IMPRESSON", "INDICATION": "INDICATON", "COMPARISON": "COMPARSION"}
    return typos[name] if name in typos and rng.random() < typo_rate else name


def mimic_report(st: State, prior: State | None, views: list[str], rng: np.random.Generator) -> tuple[str, set]:
    """Full report text of one study and the set of labels it explicitly negates."""
    find, imp, neg = _finding_sentences(st, prior, rng)
    frontal = [v for v in views if v in ("PA", "AP")]
    exam = ("CHEST (PA AND LAT)" if "PA" in frontal and len(views) > 1 else
            "CHEST (PORTABLE AP)" if frontal == ["AP"] else "CHEST (SINGLE VIEW)" if len(views) == 1 else
            "CHEST (PA AND LAT)")
    indication = _pick(rng, ["___ year old man with shortness of breath  // eval for pneumonia",
                             "___ year old woman with ?pleural effusion  // ?pleural effusion",
                             "___M with chest pain, evaluate for acute process",
                             "History: ___F with fever and cough", "___ with line placement  // line position?"])
    technique = {"CHEST (PA AND LAT)": "Chest PA and lateral", "CHEST (PORTABLE AP)": "Portable AP upright chest radiograph",
                 }.get(exam, "Single frontal view of the chest")
    comparison = "___" if prior is not None else "None."
    style = rng.random()
    typo_rate = 0.08
    lines = [" " * 33 + "FINAL REPORT"]
    if style < 0.03:  # headerless: paragraphs only
        lines += _wrap(f"{technique}. " + " ".join(find)) + [" "] + _wrap(" ".join(imp))
    else:
        if style < 0.07:
            lines.append(" " + exam.replace("CHEST (PA AND LAT)", "CHEST, PA AND LATERAL") + ":")
            lines.append(" ")
        lines += [f" EXAMINATION:  {exam}", " ", f" {_header('INDICATION', rng, typo_rate)}:  {indication}", " ",
                  f" TECHNIQUE:  {technique}", " ", f" {_header('COMPARISON', rng, typo_rate)}:  {comparison}", " "]
        if 0.07 <= style < 0.11:
            lines += [" FINDINGS AND IMPRESSION: ", " "] + _wrap(" ".join(find + imp))
        else:
            if style < 0.95:
                lines += [f" {_header('FINDINGS', rng, typo_rate)}: ", " "] + _wrap(" ".join(find)) + [" "]
            lines += [f" {_header('IMPRESSION', rng, typo_rate)}: ", " "]
            if len(imp) > 1 and rng.random() < 0.5:
                for i, s in enumerate(imp, 1):
                    lines += _wrap(f"{i}. {s}")
            else:
                lines += _wrap(" ".join(imp))
    if rng.random() < 0.03:  # addendum at the top, separated by a full line of underscores
        add = _wrap("ADDENDUM: Findings were discussed with Dr. ___ by telephone at ___ on ___.")
        lines = [" " * 33 + "ADDENDUM"] + add + [" " + "_" * 78] + lines
    return "\n".join(lines) + "\n", neg


def impression_text(st: State, rng: np.random.Generator) -> str:
    """CheXpert-5x200-style impression: lower case, numbered items, wrapped at ~65 characters, quoted by the CSV."""
    _, imp, _ = _finding_sentences(st, None, rng)
    extras = ["no pneumothorax.", "no acute osseous abnormality.", "the lungs are otherwise clear."]
    items = [s.lower() for s in imp] + ([_pick(rng, extras)] if rng.random() < 0.6 else [])
    body = "\n".join("\n".join(textwrap.wrap(f"{i}. {s}", 65)) for i, s in enumerate(items, 1))
    return f"\n{body}\n"
