"""Numbers quoted from the papers, in percent, each with where it was read.

These are the *papers'* results on real datasets (ResNet-50 unless said, ImageNet weights, GPU). The book
shows them beside its own runs, always labelled as the papers' numbers; nothing here is produced by this
package. The paper texts are extractions (``shared/papers``): tables arrive with their cells out of order,
so each entry notes how it was read back.
"""

from __future__ import annotations

# IANet (Hou et al., CVPR 2019), Table 4a-c, row "base.": ResNet-50 trained with cross-entropy only
# (section 4.3). The row appears identically in all three sub-tables, which pins the cell order.
BASELINE_RESNET50: dict[str, dict[str, float]] = {
    "IANet paper, Table 4 'base.' (ResNet-50, CE): Market-1501": {"rank-1": 90.4, "mAP": 76.2},
    "IANet paper, Table 4 'base.' (ResNet-50, CE): DukeMTMC-reID": {"rank-1": 82.1, "mAP": 66.0},
}


def _market_duke(
    market_rank1: float, market_map: float, duke_rank1: float, duke_map: float
) -> dict[str, float]:
    """One row of an IANet table: rank-1 and mAP on Market-1501 and DukeMTMC-reID."""
    return {
        "Market-1501 rank-1": market_rank1,
        "Market-1501 mAP": market_map,
        "DukeMTMC-reID rank-1": duke_rank1,
        "DukeMTMC-reID mAP": duke_map,
    }


# IANet (Hou et al., CVPR 2019), Table 4a-f: ablations on Market-1501 and DukeMTMC-reID, ResNet-50 trained
# with cross-entropy only; unless a row says otherwise, one block after the last bottleneck of stage 3
# (section 4.3). How the cells were read back: the extraction lists each sub-table's cells out of row
# order, but every cell falls in exactly one value range (Market rank-1 > 90, Market mAP 76-83, Duke
# rank-1 82-88, Duke mAP 66-74) and within each column the values keep the rows' order; the 'base.' row
# (90.4 / 76.2 / 82.1 / 66.0) starts every column, which confirms that order. Cross-checks that hold:
# 4b PROD = 4c Appearance, 4d SIA + CIA = 4e stage3 = 4f stage3, 4e stage2 = 4f stage2, and 4f stage23 =
# Table 1's IANet (94.4 / 83.1 / 87.1 / 73.4).
IANET_TABLES: dict[str, dict[str, dict[str, float]]] = {
    # (a) single-context SIA (appearance relation S^A_K only) with patch size K
    "4a": {
        "base.": _market_duke(90.4, 76.2, 82.1, 66.0),
        "K=1": _market_duke(91.8, 79.0, 83.6, 68.8),
        "K=2": _market_duke(93.1, 79.0, 84.1, 68.8),
        "K=3": _market_duke(92.2, 78.9, 83.8, 68.7),
        "K=5": _market_duke(91.1, 77.9, 83.5, 67.3),
    },
    # (b) multi-context SIA (K = 1, 2, 3, appearance relation only) with fusion function F
    "4b": {
        "base.": _market_duke(90.4, 76.2, 82.1, 66.0),
        "MAX": _market_duke(93.6, 81.8, 85.2, 71.0),
        "SUM": _market_duke(93.5, 81.9, 85.4, 70.9),
        "PROD": _market_duke(93.9, 82.0, 85.6, 71.5),
    },
    # (c) SIA aggregating with the location, appearance or semantic relation map
    "4c": {
        "base.": _market_duke(90.4, 76.2, 82.1, 66.0),
        "Location": _market_duke(92.1, 79.2, 83.7, 68.5),
        "Appearance": _market_duke(93.9, 82.0, 85.6, 71.5),
        "Semantic": _market_duke(94.1, 82.5, 85.9, 72.2),
    },
    # (d) CIA alone and the arrangements of SIA and CIA ('SIA & CIA' = parallel, 'CIA + SIA' = CIA first)
    "4d": {
        "base.": _market_duke(90.4, 76.2, 82.1, 66.0),
        "CIA": _market_duke(91.9, 79.3, 84.3, 68.7),
        "SIA & CIA": _market_duke(94.0, 82.5, 85.7, 72.2),
        "CIA + SIA": _market_duke(94.1, 82.5, 85.7, 72.3),
        "SIA + CIA": _market_duke(94.3, 82.8, 85.9, 72.3),
    },
    # (e) one IA block after the bottleneck of a single stage
    "4e": {
        "base.": _market_duke(90.4, 76.2, 82.1, 66.0),
        "stage1": _market_duke(93.7, 81.8, 85.3, 71.5),
        "stage2": _market_duke(94.4, 82.8, 86.5, 71.8),
        "stage3": _market_duke(94.3, 82.8, 85.9, 72.3),
        "stage4": _market_duke(92.3, 79.6, 84.8, 69.3),
    },
    # (f) blocks after the bottlenecks vs after every residual block of stages 2 and 3 ('stage23-c')
    "4f": {
        "base.": _market_duke(90.4, 76.2, 82.1, 66.0),
        "stage2": _market_duke(94.4, 82.8, 86.5, 71.8),
        "stage3": _market_duke(94.3, 82.8, 85.9, 72.3),
        "stage23-c": _market_duke(93.6, 81.9, 86.1, 72.2),
        "stage23": _market_duke(94.4, 83.1, 87.1, 73.4),
    },
}

# IANet paper, Table 5: other backbones, without and with IA blocks, Market-1501 only. Read back by
# value range (rank-1 above every mAP in each pair) in the extraction's order R32, R32-IA, R101,
# R101-IA, GN, GN-IA. 'R32' is written so in the paper (ResNet-32); GN is GoogLeNet.
IANET_BACKBONES: dict[str, dict[str, float]] = {
    "R32": {"Market-1501 rank-1": 88.7, "Market-1501 mAP": 72.5},
    "R32-IA": {"Market-1501 rank-1": 92.6, "Market-1501 mAP": 79.2},
    "R101": {"Market-1501 rank-1": 91.1, "Market-1501 mAP": 76.5},
    "R101-IA": {"Market-1501 rank-1": 94.0, "Market-1501 mAP": 83.0},
    "GN": {"Market-1501 rank-1": 83.4, "Market-1501 mAP": 64.0},
    "GN-IA": {"Market-1501 rank-1": 87.1, "Market-1501 mAP": 69.7},
}


# QAConv (Liao & Shao, ECCV 2020), Section 5.3: ResNet-152 (ImageNet weights), 384x128, trained on one
# dataset and tested on another with no target data. Tables 1 and 2 are Market-1501 -> DukeMTMC-reID;
# Table 3 both directions. The extraction keeps these small tables' rows and columns in order. Table 3's
# TFusion row (another method) is left out; the QAConv (ResNet-50) rows are Tables 4 and 5.
QACONV_TABLES: dict[str, dict[str, dict[str, float]]] = {
    "1": {  # role of the augmentation, Market -> Duke
        "no RE / RB": {"rank-1": 50.5, "mAP": 29.5},
        "random erasing": {"rank-1": 51.6, "mAP": 30.6},
        "random block": {"rank-1": 54.4, "mAP": 33.6},
    },
    "2": {  # role of the loss, Market -> Duke; the first four use pooled features and the cosine
        "softmax cross-entropy": {"rank-1": 34.9, "mAP": 18.4},
        "arc loss": {"rank-1": 35.3, "mAP": 17.1},
        "center loss": {"rank-1": 38.9, "mAP": 22.1},
        "class memory loss": {"rank-1": 40.7, "mAP": 21.8},
        "QAConv": {"rank-1": 54.4, "mAP": 33.6},
    },
    "3 Market->Duke": {
        "QAConv": {"rank-1": 54.4, "mAP": 33.6},
        "QAConv + RR": {"rank-1": 61.8, "mAP": 52.4},
        "QAConv + RR + TLift": {"rank-1": 66.7, "mAP": 56.0},
    },
    "3 Duke->Market": {
        "QAConv": {"rank-1": 62.1, "mAP": 31.0},
        "QAConv + RR": {"rank-1": 68.2, "mAP": 51.2},
        "QAConv + RR + TLift": {"rank-1": 74.4, "mAP": 56.6},
    },
}
# Tables 4 and 5, QAConv with a ResNet-50 backbone (no re-ranking, no TLift).
QACONV_RESNET50: dict[str, dict[str, float]] = {
    "Market -> Duke": {"rank-1": 47.7, "mAP": 27.7},
    "Duke -> Market": {"rank-1": 58.6, "mAP": 27.2},
}


def _map_cmc(mean_ap: float, rank1: float, rank5: float, rank10: float) -> dict[str, float]:
    return {"mAP": mean_ap, "rank-1": rank1, "rank-5": rank5, "rank-10": rank10}


# Pyramid (Zheng et al., CVPR 2019), Table 4: sub-models on Market-1501 (an ImageNet ResNet with 2,048
# channels at 384x128; the paper does not say which depth, the authors' released code uses ResNet-101),
# each with one setting changed from "Pyramid-ours". The extraction lists the row names, then
# each column (mAP, rank 1, rank 5, rank 10) in row order; every column has the ten rows.
PYRAMID_TABLE4: dict[str, dict[str, float]] = {
    "Pyramid-000001": _map_cmc(82.1, 92.8, 97.3, 98.2),
    "Pyramid-100000": _map_cmc(84.9, 93.9, 97.6, 98.5),
    "Pyramid-001111": _map_cmc(86.7, 94.8, 98.4, 98.8),
    "Pyramid-110011": _map_cmc(87.2, 95.0, 98.1, 98.8),
    "Pyramid-111100": _map_cmc(87.5, 94.8, 98.3, 98.9),
    "Feature-64": _map_cmc(86.9, 94.5, 97.8, 98.6),
    "Feature-256": _map_cmc(87.8, 95.3, 98.2, 98.9),
    "No triplet loss": _map_cmc(86.5, 93.8, 97.5, 98.4),
    "Pyramid-ours": _map_cmc(88.2, 95.7, 98.4, 99.0),
    "PCB+RPP": _map_cmc(81.6, 93.8, 97.5, 98.5),
}


def _sysu(rank1: float, rank5: float | None, rank10: float, rank20: float,
          mean_ap: float) -> dict[str, float]:
    row = {"rank-1": rank1, "rank-5": rank5, "rank-10": rank10, "rank-20": rank20, "mAP": mean_ap}
    return {k: v for k, v in row.items() if v is not None}


# DDAG (Ye et al., ECCV 2020): a two-stream ResNet-50 (ImageNet weights), 288x144, on SYSU-MM01 (infrared
# queries, visible gallery, single-shot, 10 random galleries) and RegDB (10 splits). Table 1 (components;
# all- and indoor-search) lists r = 1, 5, 10, 20 and mAP per row in column order. Table 2 (part-attention
# designs, B + P, all-search) has columns "Res." (residual: none / identity "Res" / residual BN "RBN"),
# r = 1, 10, 20, mAP. Table 3 (B + G, all-search) is printed transposed: the header row holds N_g = 0, 1,
# 2, 4, 8 and the two rows are rank-1 and mAP (N_g = 0 repeats B). Table 5 gives DDAG on RegDB in both
# directions (r = 1, 10, 20, mAP). The extraction keeps the rows and columns of these tables in order.
DDAG_TABLES: dict[str, dict[str, dict[str, float]]] = {
    "1 all-search": {
        "B": _sysu(48.18, 75.81, 85.73, 93.52, 47.64),
        "B+P": _sysu(53.69, 81.16, 88.38, 94.56, 51.37),
        "B+G": _sysu(50.75, 78.43, 86.71, 93.62, 49.73),
        "B+P+G": _sysu(54.75, 82.31, 90.39, 95.81, 53.02),
    },
    "1 indoor-search": {
        "B": _sysu(49.52, 78.86, 88.70, 95.27, 58.12),
        "B+P": _sysu(58.08, 84.91, 92.37, 97.26, 65.07),
        "B+G": _sysu(52.90, 83.50, 92.65, 97.75, 62.26),
        "B+P+G": _sysu(61.02, 87.13, 94.06, 98.41, 67.98),
    },
    "2": {
        "B (no parts)": _sysu(48.18, None, 85.73, 93.52, 47.64),
        "avg, Res": _sysu(48.34, None, 86.03, 93.72, 48.43),
        "concat, Res": _sysu(50.34, None, 86.43, 94.19, 49.77),
        "weight, Res": _sysu(51.06, None, 86.78, 94.39, 49.92),
        "weight, RBN": _sysu(53.69, None, 88.38, 94.56, 51.37),
    },
    "3": {
        "N_g=0 (B)": {"rank-1": 48.18, "mAP": 47.64},
        "N_g=1": {"rank-1": 49.26, "mAP": 48.42},
        "N_g=2": {"rank-1": 49.85, "mAP": 49.12},
        "N_g=4": {"rank-1": 50.45, "mAP": 49.46},
        "N_g=8": {"rank-1": 50.75, "mAP": 49.73},
    },
    "5 visible->thermal": {"B+P+G": _sysu(69.34, None, 86.19, 91.49, 63.46)},
    "5 thermal->visible": {"B+P+G": _sysu(68.06, None, 85.15, 90.31, 61.80)},
}


# IPAD (Instance and Pair-Aware Dynamic Networks for Re-identification), ResNet-50 (ImageNet weights) at
# 256x128 (vehicles 256x256), GPU. Tables I and II of the extraction are NOT quoted: their cells are copies
# of Table V's first rows (other methods' DukeMTMC-reID results: DuATM 64.6 / 81.8 / 90.2, PCB+RPP 69.2 /
# 83.3, ...), in the same order, so they say nothing about IPAD or its backbones.
# Table III (DukeMTMC-reID) is partly corrupt too, and read back with the prose of Section IV-C: the
# extracted "Baseline" row (64.6 / 81.8 / 90.2) is DuATM's row of Table V, the extracted "IPAD" row repeats
# "IPAD V2", and CMC-10 reads 96.1 on all four rows (left out). The prose gives each row's gain over the
# baseline: V1 +1.0 mAP / +0.5 CMC-1, V2 +1.9 / +1.9, IPAD +3.1 / +2.0. V1 and V2 as extracted (77.4 / 87.2
# and 78.3 / 88.6) both give the same baseline, 76.4 / 86.7 (quoted as derived, no CMC-5); that baseline +
# 3.1 / +2.0 is 79.5 / 88.7, exactly Table V's IPAD row (79.5 / 88.7 / 95.0), quoted for "IPAD". Section
# IV-C: the attention version (self-attention + co-attention in place of the dynamic layers) is 0.8 mAP /
# 0.7 CMC-1 below IPAD, i.e. 78.7 / 88.0 (derived).
# Table IV: the extraction keeps each row's nine cells in order (VeRi mAP, CMC-1, CMC-5; VehicleID small,
# medium, large: mAP, CMC-1), checked on rows with N/A cells (NuFACT reports CMC-1 alone on VehicleID).
# Table V: DukeMTMC-reID, the rows in the extraction's order; IANet's row matches the IANet paper's Table 1.
IPAD_TABLES: dict[str, dict[str, dict[str, float]]] = {
    "III": {
        "Baseline": {"mAP": 76.4, "rank-1": 86.7},  # derived from the prose (see above)
        "IPAD V1": {"mAP": 77.4, "rank-1": 87.2, "rank-5": 94.6},
        "IPAD V2": {"mAP": 78.3, "rank-1": 88.6, "rank-5": 94.6},
        "IPAD": {"mAP": 79.5, "rank-1": 88.7, "rank-5": 95.0},  # Table V's row, = derived baseline + gains
        "attention version": {"mAP": 78.7, "rank-1": 88.0},  # derived from Section IV-C
    },
    "IV": {
        "IPAD": {"VeRi mAP": 82.4, "VeRi rank-1": 96.6, "VeRi rank-5": 99.0,
                 "VehicleID small mAP": 89.6, "VehicleID small rank-1": 84.6,
                 "VehicleID medium mAP": 86.1, "VehicleID medium rank-1": 80.4,
                 "VehicleID large mAP": 83.6, "VehicleID large rank-1": 77.8},
        "MoV1+BS (a strong baseline)": {"VeRi mAP": 67.6, "VeRi rank-1": 90.2, "VeRi rank-5": 96.4,
                                        "VehicleID small mAP": 84.2, "VehicleID small rank-1": 78.8,
                                        "VehicleID medium mAP": 79.1, "VehicleID medium rank-1": 73.4,
                                        "VehicleID large mAP": 75.5, "VehicleID large rank-1": 69.3},
    },
    "V": {
        "IANet": {"mAP": 73.4, "rank-1": 87.1},
        "IPAD": {"mAP": 79.5, "rank-1": 88.7, "rank-5": 95.0},
    },
}
