// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title MockStablecoin
/// @notice A 6-decimal ERC-20 for development chains only: its owner mints at will.
contract MockStablecoin is ERC20, Ownable {
    /// @param owner_ May mint.
    constructor(address owner_) ERC20("deedmesh mock USD", "mUSD") Ownable(owner_) {}

    /// @notice Mint `amount` to `to` (development chains only).
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }

    /// @inheritdoc ERC20
    function decimals() public pure override returns (uint8) {
        return 6;
    }
}
