"""Deploying the contract set to a fresh chain, and the record of where it went.

``deploy()`` puts LicenseRegistry, OracleRegistry, JobEscrow (and the mock stablecoin on dev
chains) on a chain, wires governance and the payment-token allow list, and returns a
``Deployment`` that serializes to JSON so that nodes, oracles and auditors can find the contracts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ._chain import Chain
from ._clients import JobEscrowClient, LicenseRegistryClient, OracleRegistryClient, TokenClient
from ._errors import DeploymentError
from ._keccak import to_checksum_address


@dataclass(frozen=True)
class DeployConfig:
    """Chain-side parameters of a deployment, with named presets."""

    epoch_seconds: int
    close_grace_epochs: int
    relink_cooldown_s: int
    oracle_threshold: int
    mock_token: bool  # deploy the 6-decimal mock stablecoin and allow it (development chains only)

    @classmethod
    def devnet(cls) -> DeployConfig:
        return cls(
            epoch_seconds=10,  # seconds-long epochs, so a devnet settles while you watch
            close_grace_epochs=2,  # a couple of epochs for a late report before the CSP may close
            relink_cooldown_s=5,  # short, so operators can try relinking
            oracle_threshold=3,  # 3 of 4 oracles: one may be down or lying
            mock_token=True,
        )

    @classmethod
    def production(cls) -> DeployConfig:
        return cls(
            epoch_seconds=3600,  # hourly epochs: one report transaction per hour
            close_grace_epochs=24 * 7,  # a week for a late report before the CSP may take the epoch back
            relink_cooldown_s=7 * 24 * 3600,  # a week: no hopping a node between licenses
            oracle_threshold=5,  # 5 of 7
            mock_token=False,
        )


@dataclass(frozen=True)
class Deployment:
    """Where the contracts of one deployment live."""

    chain_id: int
    block: int
    license_registry: str
    oracle_registry: str
    job_escrow: str
    token: str | None
    admin: str
    attester: str
    genesis_time: int
    epoch_seconds: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        try:
            data: dict[str, Any] = json.loads(text)
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise DeploymentError(f"malformed deployment record: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            return cls.from_json(path.read_text())
        except FileNotFoundError as exc:
            raise DeploymentError(f"no deployment record at {path}") from exc

    def check_chain(self, chain: Chain) -> None:
        """Raise ``DeploymentError`` unless ``chain`` is the chain this deployment is on."""
        if chain.chain_id != self.chain_id:
            raise DeploymentError(f"deployment is for chain {self.chain_id}, connected to {chain.chain_id}")
        if chain.w3.eth.get_code(to_checksum_address(self.job_escrow)) in (b"", None):
            raise DeploymentError(f"no contract at {self.job_escrow} on chain {chain.chain_id}")

    def licenses(self, chain: Chain) -> LicenseRegistryClient:
        return LicenseRegistryClient(chain, self.license_registry)

    def oracles(self, chain: Chain) -> OracleRegistryClient:
        return OracleRegistryClient(chain, self.oracle_registry)

    def escrow(self, chain: Chain) -> JobEscrowClient:
        return JobEscrowClient(chain, self.job_escrow)

    def payment_token(self, chain: Chain) -> TokenClient:
        if self.token is None:
            raise DeploymentError("this deployment has no payment token")
        return TokenClient(chain, self.token)


def deploy(chain: Chain, config: DeployConfig, *, admin: str, oracles: Sequence[str], attester: str,
           genesis_time: int | None = None) -> Deployment:
    """Deploy the contract set; ``admin`` gets every governance role. Epoch 0 starts at
    ``genesis_time`` (default: the latest block's timestamp)."""
    admin = to_checksum_address(admin)
    genesis = chain.now() if genesis_time is None else genesis_time
    start_block = chain.block_number()
    licenses, _ = chain.deploy("LicenseRegistry", admin, config.relink_cooldown_s, sender=admin)
    registry, _ = chain.deploy("OracleRegistry", admin, [to_checksum_address(o) for o in oracles],
                               config.oracle_threshold, sender=admin)
    escrow, _ = chain.deploy("JobEscrow", admin, licenses.address, registry.address, to_checksum_address(attester),
                             genesis, config.epoch_seconds, config.close_grace_epochs, sender=admin)
    token_address = None
    if config.mock_token:
        token, _ = chain.deploy("MockStablecoin", admin, sender=admin)
        token_address = token.address
        JobEscrowClient(chain, escrow.address).set_token_allowed(token.address, True, sender=admin)
    return Deployment(
        chain_id=chain.chain_id, block=start_block + 1, license_registry=licenses.address,
        oracle_registry=registry.address, job_escrow=escrow.address, token=token_address, admin=admin,
        attester=to_checksum_address(attester), genesis_time=genesis, epoch_seconds=config.epoch_seconds,
    )
