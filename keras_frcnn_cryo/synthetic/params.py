"""Synthetic data: class names, default geometry and the physical parameters of the simulation (nm)."""
from __future__ import annotations

from dataclasses import dataclass


MITO_CLASS = "mitochondrion"
DROPLET_CLASS = "lipid_droplet"
DEFAULT_PIXEL_SIZE_A = 30.0
DEFAULT_SHAPE = (100, 512, 512)
DEFAULT_SLICE_STEP = 5
TOY_IMAGES_PER_GROUP = 4


@dataclass(frozen=True)
class SimulationParams:
    """Physical constants of the phantom and the microscope (lengths in nm, densities relative to ice=0)."""

    # mitochondria
    mito_count_probs: tuple[float, ...] = (0.1, 0.25, 0.3, 0.2, 0.15)   # P(0..4 mitochondria)
    mito_length_nm: tuple[float, float] = (300.0, 1000.0)
    mito_width_nm: tuple[float, float] = (200.0, 500.0)
    mito_max_elevation_deg: float = 35.0        # slant of the long axis out of the xy plane
    mito_bend_prob: float = 0.5
    membrane_thickness_nm: tuple[float, float] = (4.0, 6.0)
    membrane_gap_nm: tuple[float, float] = (10.0, 20.0)    # outer-inner membrane distance
    crista_spacing_nm: tuple[float, float] = (35.0, 90.0)
    crista_lumen_nm: tuple[float, float] = (6.0, 12.0)
    crista_max_tilt_deg: float = 12.0
    crista_presence: float = 0.85               # fraction of crista slots filled
    mito_granules: tuple[int, int] = (0, 3)     # dense matrix granules per mitochondrion
    granule_radius_nm: tuple[float, float] = (10.0, 20.0)
    # densities
    rho_membrane: float = 1.0
    rho_cytoplasm: float = 0.2
    rho_cytoplasm_texture: float = 0.05         # std of the smooth cytoplasm fluctuation
    cytoplasm_texture_nm: float = 60.0          # correlation length of that fluctuation
    rho_ims: float = 0.18                       # intermembrane space and crista lumen
    rho_matrix: tuple[float, float] = (0.38, 0.5)
    rho_granule: float = 1.3
    rho_droplet: tuple[float, float] = (0.55, 0.7)
    rho_vesicle_lumen: tuple[float, float] = (0.03, 0.25)
    rho_mvb_lumen: float = 0.25
    rho_er_lumen: float = 0.22
    rho_microtubule: float = 0.9
    rho_ribosome: float = 0.8
    rho_gold: float = 6.0
    # distractors (counts per um^2 of simulated xy area unless said otherwise)
    droplet_count_probs: tuple[float, ...] = (0.45, 0.35, 0.2)          # P(0..2) in the field of view
    droplet_radius_nm: tuple[float, float] = (80.0, 250.0)
    vesicles_per_um2: tuple[float, float] = (3.0, 10.0)
    vesicle_radius_nm: tuple[float, float] = (15.0, 80.0)
    large_vesicles_per_um2: tuple[float, float] = (0.2, 0.8)
    large_vesicle_radius_nm: tuple[float, float] = (100.0, 250.0)
    mvb_per_um2: tuple[float, float] = (0.0, 0.4)
    mvb_radius_nm: tuple[float, float] = (120.0, 250.0)
    mvb_inner_vesicles: tuple[int, int] = (4, 15)
    mvb_inner_radius_nm: tuple[float, float] = (15.0, 30.0)
    er_sheets_per_um2: tuple[float, float] = (0.3, 1.2)
    er_half_extent_nm: tuple[float, float] = (100.0, 400.0)
    er_lumen_nm: tuple[float, float] = (25.0, 50.0)
    er_normal_max_elevation_deg: float = 20.0    # most sheets stand nearly upright: line pairs in a slice
    microtubules_per_um2: tuple[float, float] = (0.0, 1.0)
    microtubule_length_nm: tuple[float, float] = (400.0, 2500.0)
    microtubule_outer_nm: float = 12.5          # 25 nm tube
    microtubule_max_elevation_deg: float = 8.0  # nearly in-plane: long lines in a slice
    microtubule_wall_nm: float = 5.0
    ribosomes_per_um3: tuple[float, float] = (2000.0, 7000.0)
    ribosome_radius_nm: float = 12.5            # ~25 nm dots
    gold_per_um2: tuple[float, float] = (0.0, 3.0)
    gold_radius_nm: float = 5.0
    cell_edge_prob: float = 0.3                 # a plasma membrane cuts the field, ice beyond it
    cell_radius_nm: tuple[float, float] = (2000.0, 6000.0)
    placement_tries: int = 60
    # microscope
    voltage_kv: float = 300.0
    defocus_um: float = 6.0
    amplitude_contrast: float = 0.35            # effective, includes energy-filter (zero-loss) contrast
    bfactor_a2: float = 12000.0                 # Gaussian envelope exp(-B k^2 / 4): the low-pass
    # ground truth
    min_area_nm2: float = 4000.0                # slice cross-sections / tilt boxes below this are skipped


PARAMS = SimulationParams()
