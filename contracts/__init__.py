"""deedmesh's on-chain half, from Python: artifacts, deployment, typed clients, chain backends.

Imports neither ``mesh`` nor ``oracle``. Everything public is listed in ``__all__``; the
``_``-prefixed modules are private.
"""

from ._anvil import Anvil, anvil_binary, free_port
from ._artifacts import Artifact, artifact_names, load_artifact
from ._chain import EMBEDDED, Chain
from ._clients import Event, JobEscrowClient, LicenseRegistryClient, OracleRegistryClient, TokenClient
from ._deploy import DeployConfig, Deployment, deploy
from ._eip712 import (
    csp_admission,
    digest,
    epoch_report,
    escrow_domain,
    job_submission,
    recover,
    release_leaf,
    sign,
    totals_leaf,
    totals_proofs,
    totals_root,
    totals_tree,
    typed_message,
)
from ._errors import (
    ArtifactError,
    ChainError,
    ChainUnreachable,
    ContractRevert,
    DeploymentError,
    TransactionFailed,
)
from ._keccak import keccak, to_checksum_address
from ._merkle import MerkleTree, hash_pair, verify
from ._revert import revert_class
from ._types import (
    AVAILABILITY_MAX,
    BPS_DENOMINATOR,
    BURN_ADDRESS,
    Claim,
    CspStatus,
    Epoch,
    Job,
    JobId,
    JobParams,
    JobStatus,
    JobTotals,
    LicenseId,
    LicenseStatus,
    SettlementPolicy,
    TokenUnits,
    TotalsProof,
)

__all__ = [
    "keccak",
    "to_checksum_address",
    "AVAILABILITY_MAX",
    "BPS_DENOMINATOR",
    "BURN_ADDRESS",
    "EMBEDDED",
    "Anvil",
    "Artifact",
    "ArtifactError",
    "Chain",
    "ChainError",
    "ChainUnreachable",
    "Claim",
    "ContractRevert",
    "CspStatus",
    "DeployConfig",
    "Deployment",
    "DeploymentError",
    "Epoch",
    "Event",
    "Job",
    "JobEscrowClient",
    "JobId",
    "JobParams",
    "JobStatus",
    "JobTotals",
    "LicenseId",
    "MerkleTree",
    "LicenseRegistryClient",
    "LicenseStatus",
    "OracleRegistryClient",
    "SettlementPolicy",
    "TokenClient",
    "TokenUnits",
    "TotalsProof",
    "TransactionFailed",
    "anvil_binary", "free_port",
    "artifact_names",
    "csp_admission",
    "deploy",
    "digest",
    "epoch_report",
    "escrow_domain",
    "job_submission",
    "load_artifact",
    "recover",
    "release_leaf",
    "revert_class",
    "sign",
    "hash_pair",
    "totals_leaf",
    "totals_proofs",
    "totals_root",
    "totals_tree",
    "typed_message",
    "verify",
]
